"""Predictions from an exported model on image files (what `tlp predict` runs)."""
from pathlib import Path

import numpy as np
import tensorflow as tf

from components import configs
from components.errors import TlpError


def load_serving_function(model_path: str | Path):
    """Accepts the export step's folder or a SavedModel folder."""
    path = Path(model_path)
    if (path / configs.SAVED_MODEL_DIR / "saved_model.pb").exists():
        path = path / configs.SAVED_MODEL_DIR
    if not (path / "saved_model.pb").exists():
        raise TlpError(f"{model_path} is neither an exported model folder (with "
                       f"{configs.SAVED_MODEL_DIR}/) nor a SavedModel folder.")
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def predict_files(model_path: str | Path, image_paths: list[str | Path],
                  top_k: int = 3) -> list[list[tuple[str, float]]]:
    """For each image, its top_k (class name, probability) pairs, most likely first."""
    serve = load_serving_function(model_path)
    missing = [str(p) for p in image_paths if not Path(p).is_file()]
    if missing:
        raise TlpError(f"no such image file: {', '.join(missing)}")
    results = []
    for image_path in image_paths:
        try:
            outputs = serve(image_bytes=tf.constant([Path(image_path).read_bytes()]))
        except tf.errors.InvalidArgumentError as error:
            raise TlpError(f"{image_path} is not a readable JPEG, PNG, GIF or BMP image: "
                           f"{error.message.splitlines()[0]}") from error
        probs = outputs["probabilities"].numpy()[0]
        names = [n.decode() for n in outputs["class_names"].numpy()[0]]
        order = np.argsort(-probs)[:top_k]
        results.append([(names[i], float(probs[i])) for i in order])
    return results
