import numpy as np
import pytest

from components import evaluation
from components.errors import TlpError

CLASSES = ["cat", "dog", "fox"]
# True labels and predictions chosen so the confusion matrix is
#   [[2, 1, 0],
#    [0, 3, 0],
#    [1, 0, 1]]
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PREDICTED = np.array([0, 0, 1, 1, 1, 1, 0, 2])


def _probs(predicted):
    """0.7 on the predicted class, 0.2 on the class before it (cyclically), 0.1 on the other."""
    rows = np.arange(len(predicted))
    probs = np.full((len(predicted), 3), 0.1)
    probs[rows, predicted] = 0.7
    probs[rows, (predicted - 1) % 3] = 0.2
    return probs


def test_metrics_on_a_hand_checkable_example():
    result = evaluation.compute_metrics(LABELS, _probs(PREDICTED), CLASSES, top_k=2)
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    assert result["accuracy"] == pytest.approx(6 / 8)
    cat, dog, fox = (result["per_class"][name] for name in CLASSES)
    assert (cat["precision"], cat["recall"], cat["support"]) == (pytest.approx(2 / 3),
                                                                 pytest.approx(2 / 3), 3)
    assert (dog["precision"], dog["recall"]) == (pytest.approx(3 / 4), 1.0)
    assert (fox["precision"], fox["recall"], fox["f1"]) == (1.0, 0.5, pytest.approx(2 / 3))
    assert result["macro_avg"]["recall"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert result["weighted_avg"]["recall"] == pytest.approx(6 / 8)  # Weighted recall = acc.
    # The 2 wrong rows (true cat as dog, true fox as cat) give the true class 0.2, second.
    assert result["loss"] == pytest.approx(-(6 * np.log(0.7) + 2 * np.log(0.2)) / 8)
    assert result["top_k"] == 2 and result["top_k_accuracy"] == 1.0
    # All confidences are 0.7 and accuracy is 0.75: one bin, a gap of 0.05.
    assert result["expected_calibration_error"] == pytest.approx(0.05)
    assert "roc_auc" not in result


def test_top_k_is_capped_at_the_number_of_classes():
    result = evaluation.compute_metrics(LABELS, _probs(PREDICTED), CLASSES, top_k=5)
    assert result["top_k"] == 3 and result["top_k_accuracy"] == 1.0


def test_binary_roc_and_pr_curves():
    labels = np.array([0, 0, 1, 1])
    positive = np.array([0.1, 0.4, 0.35, 0.8])  # The classic sklearn example: AUC 0.75.
    result = evaluation.compute_metrics(labels, np.stack([1 - positive, positive], axis=1),
                                        ["no", "yes"])
    assert result["roc_auc"] == pytest.approx(0.75)
    assert result["pr_auc"] == pytest.approx(0.8333, abs=1e-4)
    roc = result["roc"]
    assert roc["fpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert max(roc["thresholds"]) <= 1  # No +inf: KFP and JSON must hold it.
    assert result["top_k"] == 2 and result["top_k_accuracy"] == 1.0


def test_calibration_error_of_a_perfectly_calibrated_model_is_zero():
    labels = np.array([0, 0, 0, 0, 1])  # Confidence 0.8 on class 0, right 4 times in 5.
    probs = np.tile([0.8, 0.2], (5, 1))
    assert evaluation.expected_calibration_error(labels, probs) == pytest.approx(0)


@pytest.mark.parametrize("accuracy, baseline, approved, reason", [
    (0.60, None, True, "reaches min_test_accuracy 0.5; no baseline"),
    (0.40, None, False, "below min_test_accuracy 0.5"),
    (0.40, 0.30, False, "below min_test_accuracy 0.5"),
    (0.80, 0.82, True, "within baseline_tolerance 0.05"),
    (0.80, 0.90, False, "worse than the baseline's 0.9000 by more than baseline_tolerance"),
    (0.95, 0.90, True, "within baseline_tolerance 0.05"),
])
def test_gate_in_each_direction(accuracy, baseline, approved, reason):
    decision, why = evaluation.gate(accuracy, 0.5, baseline, tolerance=0.05)
    assert decision is approved and reason in why


TRAIN_HISTORY = {"epoch": [1, 2], "loss": [1.0, 0.8], "val_loss": [1.1, 0.9],
                 "accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.5],
                 "learning_rate": [1e-3, 1e-3]}


def test_report_holds_curves_heatmap_table_and_wrong_images():
    probs = _probs(PREDICTED)
    images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    predictions = evaluation.Predictions(LABELS, probs, [(2, images[0]), (6, images[1])])
    result = evaluation.compute_metrics(LABELS, probs, CLASSES)
    result["gate"] = {"approved": False, "reason": "test accuracy 0.75 is below 0.8"}
    tune = {"epoch": [3], "loss": [0.7], "val_loss": [0.8], "accuracy": [0.7],
            "val_accuracy": [0.6], "learning_rate": [1e-5]}
    report = evaluation.render_report(result, predictions, CLASSES, TRAIN_HISTORY, tune)
    images = {alt: report.count(f'<img alt="{alt}" src="data:image/png;base64,')
              for alt in ("training curves", "confusion matrix",
                          "most confidently wrong test images")}
    assert images == {"training curves": 1, "confusion matrix": 1,
                      "most confidently wrong test images": 1}
    assert "<td>fox</td><td>1.000</td><td>0.500</td><td>0.667</td><td>2</td>" in report
    assert "<td>macro avg</td>" in report and "<td>weighted avg</td>" in report
    assert "held back</b>:\ntest accuracy 0.75 is below 0.8" in report
    assert "src=\"http" not in report  # Self-contained.
    assert "<tr><td>test accuracy</td><td>0.7500</td></tr>" in report
    assert "before training" not in report  # No initial model's metrics given.


def test_report_shows_metrics_before_and_after_training():
    result = evaluation.compute_metrics(LABELS, _probs(PREDICTED), CLASSES)
    # Before training: everything predicted as cat, right for the 3 cats of 8.
    result["initial"] = evaluation.compute_metrics(LABELS, _probs(np.zeros(8, int)), CLASSES)
    predictions = evaluation.Predictions(LABELS, _probs(PREDICTED), [])
    report = evaluation.render_report(result, predictions, CLASSES, TRAIN_HISTORY, {})
    assert "<th>before training</th><th>after training</th><th>change</th>" in report
    assert "<tr><td>test accuracy</td><td>0.3750</td><td>0.7500</td><td>+0.3750</td></tr>" \
        in report
    assert "near-duplicate" not in report  # No preprocess summary given.


def test_report_counts_the_near_duplicate_groups():
    result = evaluation.compute_metrics(LABELS, _probs(PREDICTED), CLASSES)
    result["data"] = {"inputs": 12, "written": 9, "duplicates": 1, "rejected": 2,
                      "near_duplicate_groups": 2, "near_duplicate_images": 5}
    report = evaluation.render_report(result, evaluation.Predictions(
        LABELS, _probs(PREDICTED), []), CLASSES, TRAIN_HISTORY, {})
    assert ("12 input files: 9 written, 1 exact duplicates, 2 rejected; 2 near-duplicate "
            "groups (5 images), each kept in one split") in report


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    """The evaluate step's function on a 2-class split with a small sigmoid model."""
    import json

    import keras
    from kfp import dsl

    from components import kfp_steps, preprocess
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("binary")
    data = make_image_folder(base / "images", {"red": 8, "blue": 8})
    preprocess.run(str(data), str(base / "ds"), str(base / "m.parquet"), 16, 0.25, 0.25, 0.5, 1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(base / "model.keras")
    # The "before training" model: predicts blue (class 0, half the test split) for every image.
    initial = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(-5.0))])
    initial.save(base / "initial.keras")
    history = {"epoch": [1], "loss": [0.7], "val_loss": [0.7], "accuracy": [0.5],
               "val_accuracy": [0.5], "learning_rate": [1e-3]}
    (base / "history.json").write_text(json.dumps(history))
    outputs = {name: cls(name=name, uri=str(base / name)) for name, cls in (
        ("metrics", dsl.Metrics), ("classification_metrics", dsl.ClassificationMetrics),
        ("report", dsl.HTML), ("evaluation", dsl.Artifact))}

    def run(min_accuracy, baseline=""):
        approved = kfp_steps.evaluate.python_func(
            dataset=dsl.Dataset(uri=str(base / "ds")),
            model=dsl.Model(uri=str(base / "model.keras")),
            initial_model=dsl.Model(uri=str(base / "initial.keras")),
            train_history=dsl.Artifact(uri=str(base / "history.json")),
            fine_tune_history=dsl.Artifact(uri=str(base / "history.json")),
            batch_size=4, top_k=3, min_test_accuracy=min_accuracy, baseline_model=baseline,
            baseline_tolerance=0.0, **outputs)
        return approved, outputs, json.loads((base / "evaluation").read_text())
    return run, base


def test_binary_step_outputs_roc_and_pr(binary_run):
    run, _ = binary_run
    approved, outputs, result = run(0.0)
    assert approved is True and result["num_examples"] == 8
    assert 0 <= result["roc_auc"] <= 1 and 0 <= result["pr_auc"] <= 1
    roc = outputs["classification_metrics"].metadata["confidenceMetrics"]
    assert len(roc) == len(result["roc"]["fpr"]) and roc[-1]["recall"] == 1
    logged = outputs["metrics"].metadata
    assert logged["roc_auc"] == result["roc_auc"] and logged["export_approved"] == 1
    assert "test_top_2_accuracy" in logged  # k capped at the 2 classes.
    assert outputs["classification_metrics"].metadata["confusionMatrix"]["annotationSpecs"] \
        == [{"displayName": "blue"}, {"displayName": "red"}]


def test_step_reports_the_initial_model_beside_the_trained_one(binary_run):
    run, _ = binary_run
    _, outputs, result = run(0.0)
    initial = result["initial"]
    assert initial["accuracy"] == 0.5 and initial["confusion_matrix"] == [[4, 0], [4, 0]]
    positive = 1 / (1 + np.exp(5.0))  # sigmoid(-5): its probability of red, for every image.
    assert initial["loss"] == pytest.approx(-(np.log(1 - positive) + np.log(positive)) / 2)
    logged = outputs["metrics"].metadata
    assert logged["initial_test_accuracy"] == 0.5
    assert logged["test_accuracy"] == result["accuracy"]
    assert logged["initial_test_loss"] == initial["loss"] and "initial_roc_auc" in logged
    with open(outputs["report"].path) as f:
        assert "<th>before training</th>" in f.read()


def test_baseline_on_the_same_split_decides(binary_run):
    run, base = binary_run
    approved, outputs, result = run(0.0, baseline=str(base / "model.keras"))
    assert approved is True and result["gate"]["baseline_accuracy"] == result["accuracy"]
    assert "within baseline_tolerance 0.0" in result["gate"]["reason"]
    assert outputs["metrics"].metadata["baseline_accuracy"] == result["accuracy"]
    approved, _, result = run(1.01, baseline=str(base / "model.keras"))
    assert approved is False and "below min_test_accuracy 1.01" in result["gate"]["reason"]


def test_baseline_export_folder_in_a_bucket(binary_run, s3_bucket):
    from components import storage

    run, base = binary_run
    storage.upload_file(base / "model.keras", s3_bucket + "/baseline/model.keras")
    _, _, result = run(0.0, baseline=s3_bucket + "/baseline")
    assert result["gate"]["baseline_accuracy"] == result["accuracy"]
    with pytest.raises(TlpError, match=f"baseline_model {s3_bucket}/none is neither"):
        run(0.0, baseline=s3_bucket + "/none")


def test_predict_split_keeps_the_most_confidently_wrong_images(binary_run):
    import keras

    _, base = binary_run
    model = keras.models.load_model(base / "model.keras")
    full = evaluation.predict_split(model, str(base / "ds"), "test", 3, keep_wrong=100)
    wrong = np.flatnonzero(full.probs.argmax(axis=1) != full.labels)
    assert len(wrong) >= 3  # The untrained model gets some wrong, so the choice matters.
    assert sorted(index for index, _ in full.wrong) == wrong.tolist()
    top = evaluation.predict_split(model, str(base / "ds"), "test", 3, keep_wrong=2)
    expected = wrong[np.argsort(-full.probs[wrong].max(axis=1), kind="stable")][:2]
    assert [index for index, _ in top.wrong] == expected.tolist()
    assert top.wrong[0][1].shape == (16, 16, 3) and top.wrong[0][1].dtype == np.uint8


def test_the_report_has_a_tuning_section_with_every_trial():
    from components import tuning

    rounds = tuning.plan(3, 2, epochs=2, fine_tune_epochs=1)
    table = tuning.new_table({"learning_rate": {"log_uniform": [1e-4, 1e-2]}}, rounds, 1)
    first = tuning.items([{"learning_rate": 1e-3}, {"learning_rate": 5e-3},
                          {"learning_rate": 2e-4}], 0, rounds[0])
    table, survivors = tuning.select(table, [tuning.trial_row(item, item["params"], a, 1.0, 3, 100)
                                             for item, a in zip(first, (0.5, 0.7, 0.6))])
    table, _ = tuning.select(table, [tuning.trial_row(survivors[0], survivors[0]["params"],
                                                      0.8, 0.5, 6, 100)])
    section = evaluation._tuning_section(table)
    assert "<h2>Tuning (4 trials)</h2>" in section and 'alt="tuning trials"' in section
    assert "Best: trial 1, val_accuracy 0.8000" in section
    assert section.count("<tr>") == 5  # The header and a row per trial run.
    assert "<td>2+1</td><td>33%</td>" in section  # Round 2: a third of the train split.
    assert evaluation._tuning_section(None) == ""
