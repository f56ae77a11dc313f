"""Predictions on image files with an exported model, a .keras file or a TFLite file (what
`tlp predict` runs)."""
import base64
import csv
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from components import configs, export
from components.errors import TlpError

# One encoded image -> (class names, probabilities).
Classifier = Callable[[bytes], tuple[list[str], np.ndarray]]


def _labels_beside(model_file: Path, num_classes: int) -> list[str]:
    """labels.txt next to a .keras or .tflite file (the export folder has one), else indices."""
    labels = model_file.parent / configs.LABELS_FILE
    names = labels.read_text().split("\n")[:num_classes] if labels.is_file() else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def _saved_model(path: Path) -> Classifier:
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def classify(image_bytes: bytes):
        outputs = serve(image_bytes=tf.constant([image_bytes]))
        return ([n.decode() for n in outputs["class_names"].numpy()[0]],
                outputs["probabilities"].numpy()[0])
    return classify


def _keras_model(path: Path) -> Classifier:
    import keras

    from components import model as model_lib

    model = keras.models.load_model(path, compile=False)
    size = model.input_shape[1]

    def classify(image_bytes: bytes):
        image = export.decode_and_resize(tf.constant(image_bytes), size)[None]
        probs = keras.ops.convert_to_numpy(model_lib.probabilities(model(image)))[0]
        return _labels_beside(path, len(probs)), probs
    return classify


def _tflite_model(path: Path) -> Classifier:
    runner = export.tflite_runner(path)
    size = int(runner.get_input_details()["images"]["shape"][1])

    def classify(image_bytes: bytes):
        image = export.decode_and_resize(tf.constant(image_bytes), size).numpy()[None]
        probs = export.tflite_probabilities(runner, image)[0]
        return _labels_beside(path, len(probs)), probs
    return classify


def _rest_endpoint(url: str) -> Classifier:
    """TF Serving's REST predict API, which KServe's v1 protocol shares: the image as base64
    in the row format, the outputs of serving_default back."""
    def classify(image_bytes: bytes):
        body = json.dumps({"signature_name": "serving_default", "instances": [
            {"image_bytes": {"b64": base64.b64encode(image_bytes).decode()}}]}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                [prediction] = json.load(response)["predictions"]
        except (urllib.error.URLError, KeyError, ValueError) as error:
            raise TlpError(f"{url} gave no predictions: {error}") from error
        return prediction["class_names"], np.array(prediction["probabilities"])
    return classify


def load_classifier(model_path: str | Path) -> Classifier:
    """An export folder (with saved_model/), a SavedModel folder (a published version
    included), a .keras file, a .tflite file, or the http(s) URL of a TF Serving / KServe
    predict endpoint (e.g. http://host:8501/v1/models/NAME:predict)."""
    if str(model_path).startswith(("http://", "https://")):
        return _rest_endpoint(str(model_path))
    path = Path(model_path)
    if (path / configs.SAVED_MODEL_DIR / "saved_model.pb").is_file():
        return _saved_model(path / configs.SAVED_MODEL_DIR)
    if (path / "saved_model.pb").is_file():
        return _saved_model(path)
    if path.is_file() and path.suffix == ".keras":
        return _keras_model(path)
    if path.is_file() and path.suffix == ".tflite":
        return _tflite_model(path)
    raise TlpError(f"{model_path} is not an exported model folder (with "
                   f"{configs.SAVED_MODEL_DIR}/), a SavedModel folder, a .keras file or a "
                   ".tflite file.")


def collect_images(paths: list[str | Path]) -> list[Path]:
    """Image files as given, and the images inside folders (recursively, sorted)."""
    images = []
    for item in map(Path, paths):
        if item.is_dir():
            images += sorted(p for p in item.rglob("*")
                             if p.suffix.lower() in configs.IMAGE_EXTENSIONS and p.is_file())
        elif item.is_file():
            images.append(item)
        else:
            raise TlpError(f"no such image file or folder: {item}")
    if not images:
        raise TlpError(f"no images in {', '.join(map(str, paths))}.")
    return images


def predict_files(model_path: str | Path, paths: list[str | Path],
                  top_k: int = 3) -> list[tuple[Path, list[tuple[str, float]]]]:
    """For each image, its top_k (class name, probability) pairs, most likely first."""
    classify = load_classifier(model_path)
    results = []
    for image_path in collect_images(paths):
        try:
            names, probs = classify(image_path.read_bytes())
        except tf.errors.InvalidArgumentError as error:
            raise TlpError(f"{image_path} is not a readable JPEG, PNG, GIF or BMP image: "
                           f"{error.message.splitlines()[0]}") from error
        results.append((image_path, [(names[i], float(probs[i]))
                                     for i in np.argsort(-probs)[:top_k]]))
    return results


def format_table(results: list[tuple[Path, list[tuple[str, float]]]]) -> str:
    rows = [["image"] + [f"top {i + 1}" for i in range(len(results[0][1]))]]
    rows += [[str(path)] + [f"{name} {prob:.3f}" for name, prob in top]
             for path, top in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def write_csv(results: list[tuple[Path, list[tuple[str, float]]]], path: str | Path) -> None:
    """One row per image and rank: image, rank, class, probability."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "rank", "class", "probability"])
        for image, top in results:
            writer.writerows([str(image), rank, name, f"{prob:.6f}"]
                             for rank, (name, prob) in enumerate(top, start=1))
