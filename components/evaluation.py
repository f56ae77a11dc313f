"""Evaluate step: test-split metrics and a self-contained HTML report."""
import base64
import html
import io

import keras
import matplotlib
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from components import model as model_lib, tfrecords

matplotlib.use("Agg")  # Headless: render to PNG only.
import matplotlib.pyplot as plt  # noqa: E402


def predict_split(model: keras.Model, dataset_dir: str, split: str,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns labels, per-class probabilities and Keras's loss/accuracy on the split."""
    num_classes = tfrecords.read_metadata(dataset_dir)["num_classes"]
    dataset = tfrecords.load_split(dataset_dir, split, batch_size, training=False,
                                   binary=model_lib.is_binary(num_classes))
    scores = model.evaluate(dataset, verbose=0, return_dict=True)
    labels = np.concatenate([y.numpy().reshape(-1) for _, y in dataset]).astype(int)
    probs = keras.ops.convert_to_numpy(model_lib.probabilities(model.predict(dataset, verbose=0)))
    return labels, probs, scores


def classification_summary(labels: np.ndarray, probs: np.ndarray,
                           class_names: list[str]) -> dict:
    predicted = probs.argmax(axis=1)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }


def _png_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plot_curves(train_history: dict, fine_tune_history: dict) -> str:
    """Loss and accuracy per epoch for both phases on one epoch axis, as a PNG data URI."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            epochs = train_history["epoch"] + fine_tune_history.get("epoch", [])
            values = train_history[key] + fine_tune_history.get(key, [])
            axis.plot(epochs, values, style, marker="o", label=key)
        if fine_tune_history.get("epoch"):
            axis.axvline(train_history["epoch"][-1] + 0.5, color="grey", linestyle=":",
                         label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    return _png_data_uri(figure)


def render_report(summary: dict, scores: dict, class_names: list[str],
                  train_history: dict, fine_tune_history: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}"
        f"</td><td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in summary["per_class"].items())
    header = "".join(f"<th>{html.escape(n)}</th>" for n in class_names)
    matrix = "".join(
        f"<tr><th>{html.escape(class_names[i])}</th>" + "".join(f"<td>{v}</td>" for v in row)
        + "</tr>" for i, row in enumerate(summary["confusion_matrix"]))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head><body>
<h1>Evaluation on the test split</h1>
<p>Test loss {scores['loss']:.4f}, test accuracy {summary['accuracy']:.4f}.</p>
<h2>Training and fine-tuning curves</h2>
<img alt="training curves" src="{plot_curves(train_history, fine_tune_history)}">
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{rows}</table>
<h2>Confusion matrix (rows: true, columns: predicted)</h2>
<table><tr><th></th>{header}</tr>{matrix}</table>
</body></html>
"""
