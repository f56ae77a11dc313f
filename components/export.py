"""Export step: a SavedModel that serves encoded image bytes, the .keras model and labels."""
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import configs, model as model_lib, tfrecords
from components.errors import TlpError


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes of any size -> float32 RGB image_size x image_size."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def export_saved_model(model: keras.Model, class_names: list[str], image_size: int,
                       path: str | Path) -> None:
    """serving_default: image_bytes (string [batch]) -> probabilities [batch, classes] and
    class_names [batch, classes] (the same names for every row, for clients' convenience)."""
    names = tf.constant(class_names)

    def serve(image_bytes):
        images = tf.map_fn(lambda b: decode_and_resize(b, image_size), image_bytes,
                           fn_output_signature=tf.TensorSpec((image_size, image_size, 3),
                                                             tf.float32))
        probs = model_lib.probabilities(model(images, training=False))
        batch = tf.shape(image_bytes)[0]
        return {"probabilities": probs,
                "class_names": tf.tile(names[None], tf.stack([batch, 1]))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(str(path), verbose=False)


def test_images(dataset_dir: str, limit: int) -> tuple[list[bytes], np.ndarray]:
    """Up to `limit` encoded test images and the same images decoded."""
    records = tf.data.TFRecordDataset(tfrecords.shard_files(dataset_dir, "test")).take(limit)
    encoded = [tf.io.parse_single_example(r, {configs.KEY_ENCODED: tf.io.FixedLenFeature(
        [], tf.string)})[configs.KEY_ENCODED].numpy() for r in records]
    decoded = np.stack([tf.io.decode_jpeg(b, channels=3).numpy() for b in encoded])
    return encoded, decoded.astype(np.float32)


def verify_saved_model(model: keras.Model, saved_model_dir: str | Path, dataset_dir: str,
                       limit: int = 64, tolerance: float = 1e-4) -> float:
    """Reloads the SavedModel and checks it predicts what the Keras model does on test
    images. Returns the largest probability difference."""
    encoded, decoded = test_images(dataset_dir, limit)
    serving = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    served = serving(image_bytes=tf.constant(encoded))["probabilities"].numpy()
    expected = keras.ops.convert_to_numpy(
        model_lib.probabilities(model.predict(decoded, verbose=0)))
    difference = float(np.abs(served - expected).max())
    if difference > tolerance:
        raise TlpError(f"the exported SavedModel disagrees with the Keras model by {difference}"
                       f" (tolerance {tolerance}) on {len(encoded)} test images.")
    return difference


def export(model_path: str, dataset_dir: str, output_dir: str) -> float:
    """Writes <output_dir>/saved_model, model.keras and labels.txt; verifies the SavedModel."""
    metadata = tfrecords.read_metadata(dataset_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = keras.models.load_model(model_path)
    saved_model_dir = out / configs.SAVED_MODEL_DIR
    export_saved_model(model, metadata["class_names"], metadata["image_size"], saved_model_dir)
    shutil.copyfile(model_path, out / configs.KERAS_MODEL_FILE)
    (out / configs.LABELS_FILE).write_text("\n".join(metadata["class_names"]) + "\n")
    difference = verify_saved_model(model, saved_model_dir, dataset_dir)
    print(f"export: SavedModel matches the Keras model (max difference {difference:.2e}); "
          f"wrote {out}", flush=True)
    return difference
