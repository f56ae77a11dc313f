"""Evaluate step: test-split metrics, the export gate and a self-contained HTML report."""
import base64
import html
import io
import json
from dataclasses import dataclass

import keras
import matplotlib
import numpy as np
from sklearn import metrics as skm

from components import configs, model as model_lib, storage, tfrecords
from components.errors import TlpError

matplotlib.use("Agg")  # Headless: render to PNG only.
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class Predictions:
    labels: np.ndarray  # [n] true class indices
    probs: np.ndarray  # [n, classes]
    wrong: list[tuple[int, np.ndarray]]  # (index, uint8 image), most confidently wrong first


def predict_split(model: keras.Model, dataset_dir: str, split: str, batch_size: int,
                  keep_wrong: int = configs.REPORT_WRONG_IMAGES) -> Predictions:
    """Predicts the split in one pass (compiled, every batch at batch_size), keeping only the
    keep_wrong most confidently wrong images (not the whole split) for the report."""
    dataset = tfrecords.load_split(dataset_dir, split, batch_size, training=False)
    labels, probs, wrong = [], [], []
    for images, batch_labels in dataset:
        batch_probs = keras.ops.convert_to_numpy(model_lib.probabilities(
            model_lib.predict_batches(model, [images], batch_size)))
        offset = sum(map(len, labels))
        for i in np.flatnonzero(batch_probs.argmax(axis=1) != batch_labels.numpy()):
            wrong.append((batch_probs[i].max(), offset + i, images[i].numpy()))
        wrong = sorted(wrong, key=lambda item: -item[0])[:keep_wrong]
        labels.append(batch_labels.numpy().astype(int))
        probs.append(batch_probs)
    return Predictions(np.concatenate(labels), np.concatenate(probs),
                       [(index, image) for _, index, image in wrong])


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray,
                               bins: int = configs.CALIBRATION_BINS) -> float:
    """Top-1 ECE (Guo et al. 2017): the sample-weighted gap between confidence and accuracy
    over equal-width confidence bins. scikit-learn has no multi-class ECE."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bin_of = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[bin_of == b].mean() - confidence[bin_of == b].mean())
                     * (bin_of == b).mean() for b in np.unique(bin_of)))


def binary_curves(labels: np.ndarray, positive_probs: np.ndarray) -> dict:
    """ROC and precision-recall curves with their areas (class 1 is the positive class)."""
    fpr, tpr, roc_thresholds = skm.roc_curve(labels, positive_probs)
    precision, recall, _ = skm.precision_recall_curve(labels, positive_probs)
    return {"roc_auc": float(skm.roc_auc_score(labels, positive_probs)),
            "pr_auc": float(skm.average_precision_score(labels, positive_probs)),
            # roc_curve's first threshold is +inf, which JSON and KFP cannot hold.
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(),
                    "thresholds": np.minimum(roc_thresholds, 1.0).tolist()},
            "pr": {"precision": precision.tolist(), "recall": recall.tolist()}}


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                    top_k: int = configs.TOP_K) -> dict:
    """Everything the report, the KFP outputs and the gate need, as plain JSON types."""
    indices = list(range(len(class_names)))
    predicted = probs.argmax(axis=1)
    report = skm.classification_report(labels, predicted, labels=indices,
                                       target_names=class_names, output_dict=True,
                                       zero_division=0)
    binary = len(class_names) == 2
    k = min(top_k, len(class_names))
    result = {
        "num_examples": int(len(labels)),
        "loss": float(skm.log_loss(labels, probs, labels=indices)),
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "top_k": k,
        # k = all classes is trivially 1 (and scikit-learn warns about it).
        "top_k_accuracy": 1.0 if k == len(class_names) else float(skm.top_k_accuracy_score(
            labels, probs[:, 1] if binary else probs, k=k, labels=indices)),
        "per_class": {name: {"precision": report[name]["precision"],
                             "recall": report[name]["recall"], "f1": report[name]["f1-score"],
                             "support": int(report[name]["support"])}
                      for name in class_names},
        "macro_avg": {m: report["macro avg"][m] for m in ("precision", "recall", "f1-score")},
        "weighted_avg": {m: report["weighted avg"][m]
                         for m in ("precision", "recall", "f1-score")},
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=indices).tolist(),
        "expected_calibration_error": expected_calibration_error(labels, probs),
    }
    if binary:
        result.update(binary_curves(labels, probs[:, 1]))
    return result


def scalar_metrics(result: dict) -> dict[str, float]:
    """The scalars of compute_metrics' result, named as the KFP Metrics show them."""
    scalars = {"test_loss": result["loss"], "test_accuracy": result["accuracy"],
               f"test_top_{result['top_k']}_accuracy": result["top_k_accuracy"],
               "expected_calibration_error": result["expected_calibration_error"]}
    scalars.update({f"{key}/{average}": result[average][key] for average in
                    ("macro_avg", "weighted_avg") for key in ("precision", "recall", "f1-score")})
    scalars.update({key: result[key] for key in ("roc_auc", "pr_auc") if key in result})
    return scalars


def gate(accuracy: float, min_accuracy: float, baseline_accuracy: float | None,
         tolerance: float) -> tuple[bool, str]:
    """Whether to export, and why: like TFX's Evaluator blessing, an absolute threshold and,
    when there is a baseline, no regression beyond the tolerance on the same test split."""
    if accuracy < min_accuracy:
        return False, f"test accuracy {accuracy:.4f} is below min_test_accuracy {min_accuracy}"
    if baseline_accuracy is None:
        return True, (f"test accuracy {accuracy:.4f} reaches min_test_accuracy {min_accuracy}"
                      "; no baseline model")
    if accuracy < baseline_accuracy - tolerance:
        return False, (f"test accuracy {accuracy:.4f} is worse than the baseline's "
                       f"{baseline_accuracy:.4f} by more than baseline_tolerance {tolerance}")
    return True, (f"test accuracy {accuracy:.4f} reaches min_test_accuracy {min_accuracy} "
                  f"and is within baseline_tolerance {tolerance} of the baseline's "
                  f"{baseline_accuracy:.4f}")


def load_baseline(path: str) -> keras.Model:
    """A baseline is a .keras file or an export folder (which holds model.keras), local or in
    a bucket (downloaded first: Keras loads local files only)."""
    candidate = path if path.endswith(".keras") else storage.join(path,
                                                                  configs.KERAS_MODEL_FILE)
    if not storage.exists(candidate):
        raise TlpError(f"baseline_model {path} is neither a .keras file nor an export folder "
                       f"with {configs.KERAS_MODEL_FILE}.")
    with storage.local_copy(candidate) as local:
        return keras.models.load_model(local, compile=False)


# ---- The HTML report -------------------------------------------------------------------

def _png_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plot_curves(train_history: dict, fine_tune_history: dict) -> str:
    """Loss, accuracy and learning rate per epoch for both phases on one epoch axis."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    epochs = train_history["epoch"] + fine_tune_history.get("epoch", [])
    for axis, keys in zip(axes, (("loss", "val_loss"), ("accuracy", "val_accuracy"),
                                 ("learning_rate",))):
        for key in keys:
            values = train_history.get(key, []) + fine_tune_history.get(key, [])
            if len(values) == len(epochs):
                axis.plot(epochs, values, "--" if key.startswith("val_") else "-",
                          marker="o", label=key)
        if fine_tune_history.get("epoch"):
            axis.axvline(train_history["epoch"][-1] + 0.5, color="grey", linestyle=":",
                         label="fine-tuning starts")
        if keys[0] == "learning_rate":
            axis.set_yscale("log")
        axis.set_xlabel("epoch")
        axis.set_title(keys[0])
        axis.legend()
    return _png_data_uri(figure)


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str]) -> str:
    size = max(4.0, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    skm.ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(
        ax=axis, cmap="Blues", xticks_rotation=45, colorbar=True)
    axis.set_title("Confusion matrix")
    return _png_data_uri(figure)


def plot_wrong_images(wrong: list[tuple[int, np.ndarray]], labels: np.ndarray,
                      probs: np.ndarray, class_names: list[str]) -> str:
    columns = min(len(wrong), 8)
    rows = -(-len(wrong) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.4 * rows),
                                squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (index, image) in zip(axes.flat, wrong):
        axis.imshow(image)
        predicted = int(probs[index].argmax())
        axis.set_title(f"true: {class_names[labels[index]]}\npredicted: "
                       f"{class_names[predicted]} ({probs[index, predicted]:.2f})", fontsize=8)
    return _png_data_uri(figure)


def plot_tuning(tuning: dict) -> str | None:
    """Validation accuracy of every trial against learning_rate (else the first numeric
    parameter searched), one colour per round; None when no numeric parameter was searched."""
    rows = tuning["trials"]
    numeric = [name for name in rows[0]["params"]
               if all(isinstance(row["params"][name], (int, float)) for row in rows)]
    if not numeric:
        return None
    x_name = "learning_rate" if "learning_rate" in numeric else numeric[0]
    figure, axis = plt.subplots(figsize=(7, 4))
    for round_index in sorted({row["round"] for row in rows}):
        points = [(row["params"][x_name], row["val_accuracy"]) for row in rows
                  if row["round"] == round_index]
        axis.scatter(*zip(*points), label=f"round {round_index + 1}", s=40)
    spec = tuning["space"].get(x_name, {})
    if "log_uniform" in spec:
        axis.set_xscale("log")
    axis.set_xlabel(x_name)
    axis.set_ylabel("val_accuracy")
    axis.set_title("Tuning trials")
    axis.legend()
    return _png_data_uri(figure)


def _tuning_section(tuning: dict | None) -> str:
    """The report's tuning section: the plot and the table of every trial, best first."""
    if not tuning or not tuning["trials"]:
        return ""
    rows = sorted(tuning["trials"], key=lambda r: (-r["round"], -r["val_accuracy"],
                                                   r["val_loss"], r["trial"]))
    names = list(rows[0]["params"])
    head = "".join(f"<th>{html.escape(n)}</th>" for n in
                   ["trial", "round", "epochs", "train share", *names, "val_accuracy",
                    "seconds"])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            row["trial"], row["round"] + 1, f"{row['epochs']}+{row['fine_tune_epochs']}",
            f"{row['train_fraction']:.0%}", *(row["params"].get(n, "") for n in names),
            f"{row['val_accuracy']:.4f}", f"{row['seconds']:.0f}")) + "</tr>" for row in rows)
    best = tuning["best"]
    note = f" {html.escape(tuning['best_note'])}" if tuning["best_note"] else ""
    plot = plot_tuning(tuning)
    image = f'<img alt="tuning trials" src="{plot}">' if plot else ""
    return (f"<h2>Tuning ({len(rows)} trials)</h2>\n<p>Best: trial {best['trial']}, "
            f"val_accuracy {best['val_accuracy']:.4f}: "
            f"{html.escape(json.dumps(best['overrides']))}; the model above was trained "
            f"with it.{note}</p>\n{image}\n<table><tr>{head}</tr>{body}</table>")


def _table_row(name: str, values: dict, support) -> str:
    cells = "".join(f"<td>{values[key]:.3f}</td>" for key in values if key != "support")
    return f"<tr><td>{html.escape(name)}</td>{cells}<td>{support}</td></tr>"


def _scalars_table(result: dict) -> str:
    """The scalar metrics after training and, when known, before it (the untrained head)
    with the change, so the gain is visible."""
    after = scalar_metrics(result)
    before = scalar_metrics(result["initial"]) if "initial" in result else {}
    header = "<th>before training</th><th>after training</th><th>change</th>" if before \
        else "<th>value</th>"
    rows = ""
    for name, value in after.items():
        cells = (f"<td>{before[name]:.4f}</td><td>{value:.4f}</td>"
                 f"<td>{value - before[name]:+.4f}</td>") if before else f"<td>{value:.4f}</td>"
        rows += f"<tr><td>{html.escape(name.replace('_', ' '))}</td>{cells}</tr>"
    return f"<table><tr><th>metric</th>{header}</tr>\n{rows}</table>"


def _data_paragraph(summary: dict) -> str:
    """Preprocess's counts: what went in, and the near-duplicate groups kept whole."""
    if not summary:
        return ""
    return (f"<p>Data: {summary['inputs']} input files: {summary['written']} written, "
            f"{summary['duplicates']} exact duplicates, {summary['rejected']} rejected; "
            f"{summary.get('near_duplicate_groups', 0)} near-duplicate groups "
            f"({summary.get('near_duplicate_images', 0)} images), each kept in one split, so "
            "no test image has a near-copy in train.</p>")


def render_report(result: dict, predictions: Predictions, class_names: list[str],
                  train_history: dict, fine_tune_history: dict,
                  tuning: dict | None = None) -> str:
    """One HTML file, every image embedded as a data URI, so it opens anywhere; with tuning
    (the trials table), a section on the trials."""
    rows = "".join(_table_row(name, m, m["support"]) for name, m in result["per_class"].items())
    for average in ("macro_avg", "weighted_avg"):
        rows += _table_row(average.replace("_", " "), result[average], result["num_examples"])
    gate = result.get("gate", {})
    wrong = "<p>No test image is misclassified.</p>"
    if predictions.wrong:
        grid = plot_wrong_images(predictions.wrong, predictions.labels, predictions.probs,
                                 class_names)
        wrong = f'<img alt="most confidently wrong test images" src="{grid}">'
    matrix = plot_confusion_matrix(result["confusion_matrix"], class_names)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}} img{{max-width:100%}}
table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child{{text-align:left}}
</style></head><body>
<h1>Evaluation on the test split ({result['num_examples']} images)</h1>
{_data_paragraph(result.get("data", {}))}
{_scalars_table(result)}
<p>Export: <b>{'approved' if gate.get('approved') else 'held back'}</b>:
{html.escape(gate.get('reason', ''))}.</p>
<h2>Training and fine-tuning curves</h2>
<img alt="training curves" src="{plot_curves(train_history, fine_tune_history)}">
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{rows}</table>
<h2>Confusion matrix (rows: true, columns: predicted)</h2>
<img alt="confusion matrix" src="{matrix}">
<h2>Most confidently wrong test images</h2>
{wrong}
{_tuning_section(tuning)}
</body></html>
"""


def evaluate(model_path: str, dataset_dir: str, batch_size: int, top_k: int,
             min_accuracy: float, baseline_model: str = "", baseline_tolerance: float = 0.0,
             initial_model_path: str = "") -> tuple[dict, Predictions]:
    """The evaluate step's work: metrics on the test split and the gate's decision, compared
    with the baseline model on the same split when one is given. With initial_model_path
    (the model before training: backbone and untrained head) its metrics are in "initial"."""
    metadata = tfrecords.read_metadata(dataset_dir)
    class_names = metadata["class_names"]
    predictions = predict_split(keras.models.load_model(model_path), dataset_dir, "test",
                                batch_size)
    result = compute_metrics(predictions.labels, predictions.probs, class_names, top_k)
    result["data"] = metadata.get("summary", {})  # Preprocess's counts, for the report.
    if initial_model_path:
        initial = predict_split(keras.models.load_model(initial_model_path), dataset_dir,
                                "test", batch_size, keep_wrong=0)
        result["initial"] = compute_metrics(initial.labels, initial.probs, class_names, top_k)
    baseline_accuracy = None
    if baseline_model:
        baseline = predict_split(load_baseline(baseline_model), dataset_dir, "test",
                                 batch_size, keep_wrong=0)
        baseline_accuracy = float(skm.accuracy_score(baseline.labels,
                                                     baseline.probs.argmax(axis=1)))
    approved, reason = gate(result["accuracy"], min_accuracy, baseline_accuracy,
                            baseline_tolerance)
    result["gate"] = {"approved": approved, "reason": reason, "min_test_accuracy": min_accuracy,
                      "baseline_model": baseline_model, "baseline_accuracy": baseline_accuracy,
                      "baseline_tolerance": baseline_tolerance}
    return result, predictions
