"""Export step: a SavedModel serving encoded image bytes or images, the .keras model, labels,
TFLite models checked against Keras, a model card, and numbered versions for TF Serving."""
import json
import os
import platform
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import configs, model as model_lib, storage, tfrecords
from components.errors import TlpError


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes of any size -> float32 RGB image_size x image_size."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def export_saved_model(model: keras.Model, class_names: list[str], image_size: int,
                       path: str | Path) -> None:
    """Two signatures, both returning probabilities [batch, classes], top_class [batch],
    top_class_name [batch] and class_names [batch, classes] (the same names for every row):
    serving_default takes image_bytes (encoded images of any size, string [batch]);
    serving_images takes images (float32 RGB in [0, 255], [batch, size, size, 3])."""
    names = tf.constant(class_names)

    def classify(images):
        probs = model_lib.probabilities(model(images, training=False))
        top = tf.argmax(probs, axis=-1)
        batch = tf.shape(images)[0]
        return {"probabilities": probs, "top_class": top,
                "top_class_name": tf.gather(names, top),
                "class_names": tf.tile(names[None], tf.stack([batch, 1]))}

    def serve_bytes(image_bytes):
        return classify(tf.map_fn(lambda b: decode_and_resize(b, image_size), image_bytes,
                                  fn_output_signature=tf.TensorSpec(
                                      (image_size, image_size, 3), tf.float32)))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(configs.SERVING_IMAGES_SIGNATURE, classify, input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    archive.write_out(str(path), verbose=False)


def export_tflite(saved_model_dir: str | Path, paths: dict[str, bool]) -> None:
    """The images signature as TFLite models, {path: quantize}; quantize: dynamic-range (int8
    weights). One converter for all: making one loads the SavedModel, seconds each time."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=[configs.SERVING_IMAGES_SIGNATURE])
    for path, quantize in paths.items():
        converter.optimizations = [tf.lite.Optimize.DEFAULT] if quantize else []
        Path(path).write_bytes(converter.convert())


def tflite_failure(error: Exception) -> str:
    """Why a TFLite conversion failed, in a line or two: the converter's own error lines
    (its message also holds the whole MLIR location trail), and a hint for what we know."""
    lines = [line.strip() for line in str(error).splitlines() if "error:" in line]
    ops = sorted({op for line in lines for op in re.findall(r"'(tf\.\w+)' op", line)})
    reason = (f"no TFLite kernel for {', '.join(ops)}" if ops
              else (lines or [f"{type(error).__name__}: {error}"])[0][:300])
    if any(op in ("tf.ResizeBicubic", "tf.ScaleAndTranslate") for op in ops):
        reason += (" (the model resizes images bicubically or with antialiasing: a KerasHub "
                   "preset's image converter, at an image_size other than the preset's own; "
                   "at its own size nothing is resized and the conversion succeeds)")
    return reason


def tflite_runner(tflite_path: str | Path):
    """The TFLite model's images signature, ready to call with images=[1, size, size, 3]."""
    with warnings.catch_warnings():  # Deprecated for ai_edge_litert, still in TF 2.21.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    return interpreter.get_signature_runner(configs.SERVING_IMAGES_SIGNATURE)


def tflite_probabilities(runner, images: np.ndarray) -> np.ndarray:
    """Runs a tflite_runner one image at a time (the converted batch size is 1)."""
    return np.concatenate([runner(images=image[None].astype(np.float32))["probabilities"]
                           for image in images])


@dataclass(frozen=True)
class Reference:
    """What the exported models are checked against: the test split's images, encoded and
    decoded (uint8), and the Keras model's probabilities on them, computed once."""
    encoded: list[bytes]
    decoded: np.ndarray
    probabilities: np.ndarray


def keras_reference(model: keras.Model, dataset_dir: str, batch_size: int = 32) -> Reference:
    records = tf.data.TFRecordDataset(tfrecords.shard_files(dataset_dir, "test"))
    encoded = [tf.io.parse_single_example(r, {configs.KEY_ENCODED: tf.io.FixedLenFeature(
        [], tf.string)})[configs.KEY_ENCODED].numpy() for r in records]
    decoded = np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in encoded])
    batches = [decoded[i:i + batch_size].astype(np.float32)
               for i in range(0, len(decoded), batch_size)]
    probabilities = keras.ops.convert_to_numpy(
        model_lib.probabilities(model_lib.predict_batches(model, batches)))
    return Reference(encoded, decoded, probabilities)


def tflite_agreement(reference: Reference, tflite_path: str | Path) -> dict:
    """How often the TFLite model's top class is the Keras model's, on the whole test split,
    and the largest probability difference."""
    expected = reference.probabilities
    served = tflite_probabilities(tflite_runner(tflite_path), reference.decoded)
    return {"top1_agreement": float((served.argmax(1) == expected.argmax(1)).mean()),
            "max_probability_difference": float(np.abs(served - expected).max()),
            "size_bytes": Path(tflite_path).stat().st_size,
            "test_images": len(reference.decoded)}


def verify_saved_model(reference: Reference, saved_model_dir: str | Path, limit: int = 64,
                       tolerance: float = 1e-4) -> float:
    """Reloads the SavedModel and checks it predicts what the Keras model does on the first
    `limit` test images, sent encoded. Returns the largest probability difference."""
    serving = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    served = serving(image_bytes=tf.constant(reference.encoded[:limit]))["probabilities"]
    difference = float(np.abs(served.numpy() - reference.probabilities[:limit]).max())
    if difference > tolerance:
        raise TlpError(f"the exported SavedModel disagrees with the Keras model by {difference}"
                       f" (tolerance {tolerance}) on {len(served)} test images.")
    return difference


def model_card(model: keras.Model, metadata: dict, backbone: str, evaluation: dict,
               histories: dict, tflite: dict) -> dict:
    """What a user needs to judge and serve the model, as JSON."""
    return {
        "model": {"backbone": backbone, "image_size": metadata["image_size"],
                  "parameters": model.count_params(),
                  "trainable_parameters": sum(int(np.prod(w.shape))
                                              for w in model.trainable_weights)},
        "data": {"class_names": metadata["class_names"],
                 "examples_per_split": metadata["num_examples"],
                 "examples_per_class": metadata.get("counts"),
                 "rejected_files": metadata.get("num_rejected", 0),
                 "preprocess_summary": metadata.get("summary")},
        "training": {phase: {"epochs": len(h.get("epoch", [])),
                             "learning_rates": sorted(set(h.get("learning_rate", []))),
                             # Training and validation time, summed over the epochs.
                             "seconds": round(sum(h["epoch_seconds"]), 1)
                             if "epoch_seconds" in h else None}
                     for phase, h in histories.items()},
        "test_metrics": {key: evaluation[key] for key in
                         ("num_examples", "loss", "accuracy", "top_k", "top_k_accuracy",
                          "expected_calibration_error", "macro_avg", "weighted_avg",
                          "per_class", "roc_auc", "pr_auc") if key in evaluation},
        # The same model before training its head, for the gain.
        "initial_test_metrics": {key: evaluation["initial"][key] for key in
                                 ("loss", "accuracy", "top_k_accuracy")}
        if "initial" in evaluation else None,
        "gate": evaluation.get("gate"),
        "tflite": tflite,
        "signatures": {"serving_default": "image_bytes: encoded JPEG/PNG/GIF/BMP, any size",
                       configs.SERVING_IMAGES_SIGNATURE:
                           "images: float32 RGB in [0, 255] at image_size"},
        "versions": {"tlp": configs.VERSION, "tensorflow": tf.__version__,
                     "keras": keras.__version__, "python": platform.python_version()},
    }


def publish(export_dir: str | Path, destination: str | Path) -> str:
    """Copies the export to <destination>/<N>, N one more than the highest existing version,
    with the SavedModel at the version's root (TF Serving's layout) and the other files
    beside it; destination is a local folder, gs:// or s3://. An existing version is never
    overwritten. Locally the version is written to a hidden folder first, then renamed, so
    servers never see half a version; renaming onto a version another writer has just
    filled fails (the folder is not empty). For buckets see _publish_to_bucket."""
    if storage.is_remote(destination):
        return _publish_to_bucket(Path(export_dir), str(destination))
    root = Path(destination)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        shutil.copytree(Path(export_dir) / configs.SAVED_MODEL_DIR, staging, dirs_exist_ok=True)
        for item in Path(export_dir).iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        while True:
            versions = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
            target = root / str(max(versions, default=0) + 1)
            try:
                os.rename(staging, target)
                return str(target)
            except OSError:
                if not target.exists():
                    raise
                # Another writer took this number meanwhile: try the next one.
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# Claims of bucket versions, <destination>/.claims/<N>: a name TF Serving ignores (not a number).
CLAIMS_DIR = ".claims"


def _taken_versions(destination: str) -> set[int]:
    """Numbers of the versions under destination, and of the claims of versions."""
    taken = set()
    for uri in storage.list_files(destination):
        parts = uri[len(destination.rstrip("/")) + 1:].split("/")
        number = parts[1] if parts[0] == CLAIMS_DIR and len(parts) > 1 else parts[0]
        if number.isdigit():
            taken.add(int(number))
    return taken


def _publish_to_bucket(export_dir: Path, destination: str) -> str:
    """Object stores cannot rename, so a version is claimed before it is written: the claim
    <destination>/.claims/<N> is created only if it does not exist yet, N one more than every
    version and claim seen; a claim already taken moves on to N + 1. The claim is atomic on
    GCS (a generation precondition); on S3 it is a check and then a write (pyarrow cannot send
    S3's conditional writes), so only two exports racing within the same moment could both
    take one number. A version that existed before the export started is never touched.
    Within the version, saved_model.pb is uploaded last: until it is there, TF Serving finds
    no SavedModel to load (and retries), so it never serves half a version."""
    version = max(_taken_versions(destination), default=0) + 1
    while not storage.write_new(storage.join(destination, CLAIMS_DIR, str(version)),
                                configs.VERSION.encode()):
        version += 1
    target = storage.join(destination, str(version))
    saved_model = export_dir / configs.SAVED_MODEL_DIR
    for folder in (p for p in saved_model.iterdir() if p.is_dir()):
        storage.upload_dir(folder, storage.join(target, folder.name))
    last = saved_model / "saved_model.pb"
    files = [p for p in [*saved_model.iterdir(), *export_dir.iterdir()]
             if p.is_file() and p != last]
    for file in [*files, last]:
        storage.upload_file(file, storage.join(target, file.name))
    return target


def export(model_path: str, dataset_dir: str, output_dir: str, backbone: str = "",
           evaluation: dict | None = None, histories: dict | None = None,
           destination: str = "") -> dict:
    """Writes <output_dir>/saved_model, model.keras, labels.txt, model.tflite,
    model_quantized.tflite and model_card.json; verifies the SavedModel and the TFLite models
    against the Keras model; publishes a new version under destination when given. A model
    TFLite cannot convert is exported without the .tflite files: the log line and the model
    card's `tflite` say why."""
    metadata = tfrecords.read_metadata(dataset_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # What is served has no augmentation layers (they only act in training anyway).
    model = model_lib.without_augmentation(keras.models.load_model(model_path))
    saved_model_dir = out / configs.SAVED_MODEL_DIR
    export_saved_model(model, metadata["class_names"], metadata["image_size"], saved_model_dir)
    model.save(out / configs.KERAS_MODEL_FILE)
    (out / configs.LABELS_FILE).write_text("\n".join(metadata["class_names"]) + "\n")
    checks = keras_reference(model, dataset_dir)
    difference = verify_saved_model(checks, saved_model_dir)
    tflite_files = {configs.TFLITE_FILE: False, configs.TFLITE_QUANTIZED_FILE: True}
    try:
        export_tflite(saved_model_dir, {out / name: quantize
                                        for name, quantize in tflite_files.items()})
    except Exception as error:  # The converter's ConverterError (not public API), and kin.
        for name in tflite_files:
            (out / name).unlink(missing_ok=True)
        tflite = {"error": tflite_failure(error)}
        described = f"NO TFLite model: the conversion failed: {tflite['error']}"
    else:
        tflite = {name: tflite_agreement(checks, out / name) for name in tflite_files}
        described = "TFLite: " + "; ".join(
            f"{name} {t['size_bytes'] / 2**20:.1f} MiB, top-1 agreement "
            f"{t['top1_agreement']:.3f}" for name, t in tflite.items())
    card = model_card(model, metadata, backbone, evaluation or {}, histories or {}, tflite)
    (out / configs.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2))
    print(f"export: SavedModel matches the Keras model (max difference {difference:.2e}); "
          f"{described}; wrote {out}", flush=True)
    summary = {"max_saved_model_difference": difference, "tflite": tflite}
    if destination:
        summary["published"] = publish(out, destination)
        print(f"export: published {summary['published']}", flush=True)
    return summary
