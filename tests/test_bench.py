"""The GPU benchmark (bench/gpu.py) and the training-throughput benchmark it runs, with tiny
settings on this CPU: the in-process measurement of both input paths (tf.data, and one
batch from memory where TensorFlow is absent, as on a GPU machine with JAX alone), the
augmentation arms and the verdicts."""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is no installed package, and the repo root on sys.path would put docker/ ahead of
# docker-py (Makefile, test): register the bench package alone.
_BENCH = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench", _BENCH / "__init__.py",
                                               submodule_search_locations=[str(_BENCH)])
sys.modules.setdefault("bench", importlib.util.module_from_spec(_spec))
from bench import demo_fine_tune, gpu, head_phase, train_throughput  # noqa: E402
from components import configs, fashion_mnist  # noqa: E402


def test_demo_fine_tune_labels_fashion_mnist_in_the_demos_class_order(tmp_path, monkeypatch):
    """The demo's classes are its sorted folder names; Fashion-MNIST numbers them otherwise.
    Class k gets k + 1 images, so a label left in Fashion-MNIST's order shows in the counts."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), np.arange(1, 11))
    images = np.zeros((len(labels), 28, 28), np.uint8)
    monkeypatch.setattr(fashion_mnist, "load", lambda split: (images, labels))
    names = sorted(fashion_mnist.CLASS_NAMES)
    out = demo_fine_tune.fashion_mnist_test(tmp_path / "test", len(labels), names)
    metadata = json.loads((out / configs.METADATA_FILE).read_text())
    assert metadata["class_names"] == names
    assert metadata["counts"]["test"] == {name: k + 1 for k, name in
                                          enumerate(fashion_mnist.CLASS_NAMES)}


def test_demo_fine_tune_arms_are_typed_fine_tune_parameters():
    assert demo_fine_tune.parse_arm("fine_tune_learning_rate=1e-4,fine_tune_epochs=2") == {
        "fine_tune_learning_rate": 1e-4, "fine_tune_epochs": 2}
    with pytest.raises(SystemExit, match="'epochs' is no fine_tune parameter"):
        demo_fine_tune.parse_arm("epochs=3")


def test_noise_stands_in_for_missing_fashion_mnist(monkeypatch):
    def missing(split):
        raise fashion_mnist.TlpError("missing")

    monkeypatch.setattr(fashion_mnist, "load", missing)
    images, labels, source = train_throughput.source_images(3)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3] * 10 and source.startswith("random noise")


@pytest.mark.parametrize("tensorflow", [True, False])
def test_tiny_measurement_on_cpu(monkeypatch, capsys, tensorflow):
    """The train phase only (fine_tune adds the same again: the CLI runs in the README)."""
    monkeypatch.setattr(train_throughput, "PHASES", ("train",))
    if not tensorflow:  # As on a GPU machine without TensorFlow: no tf.data pipeline.
        monkeypatch.setattr(train_throughput, "installed", lambda module: False)
    args = train_throughput.parser(**gpu.SETTINGS).parse_args(
        ["--image-size", "32", "--images-per-class", "2", "--batch-size", "4", "--steps", "1",
         "--repeats", "1"])
    assert (args.batch_size, args.backend) == (4, ["jax", "tensorflow"])
    result = train_throughput.measure(args)
    assert "accelerators: training on CPU" in capsys.readouterr().out
    assert (result["devices"], result["policy"], result["tensorflow"]) == (
        ["CPU"], "float32", tensorflow)
    assert list(result["rates"]) == ["train"]
    for phase in train_throughput.PHASES:
        rates = result["rates"][phase]
        assert (rates["pipeline"] is not None) == tensorflow
        assert rates["in_memory"] > 0 and rates["in_memory_no_augmentation"] > 0
        # JAX only: the next test.
        assert rates["device_resident"] is None and rates["pipeline_keras_feed"] is None
        jit = result["jit"][phase]
        # TensorFlow on CPU: Keras turns XLA off for "auto"; without augmentation layers
        # jit_compile=True would compile.
        assert jit["no_augmentation"] == {"requested": "auto", "resolved": False,
                                          "if_true": True, "after_fit": False}
    train_throughput.report(args, [result])
    table = capsys.readouterr().out
    assert "augment share" in table and "train      tensorflow" in table


def test_jax_times_the_step_on_device_too():
    """On JAX (its own process, as bench.gpu runs it) the augmented train step also runs as
    one jax.jit over a batch already on the device, and the real pipeline is also fed as
    Keras feeds a tf.data dataset, for each phase."""
    args = train_throughput.parser(**gpu.SETTINGS).parse_args(
        ["--image-size", "32", "--images-per-class", "2", "--batch-size", "4", "--steps", "1",
         "--repeats", "1", "--backend", "jax"])
    [result] = train_throughput.run(args)
    assert result["backend"] == "jax", result
    for phase in train_throughput.PHASES:
        assert result["rates"][phase]["device_resident"] > 0
        assert result["rates"][phase]["pipeline_keras_feed"] > 0
        assert result["rates"][phase]["pipeline"] > 0
        assert result["jit"][phase]["augmented"]["after_fit"] is True


def test_jit_compile_true_is_asked_of_keras(capsys):
    args = argparse.Namespace(jit_compile="true")
    from components import model as model_lib

    model = model_lib.build_model(10, "MobileNetV2", 32, "none",
                                  augmentation=model_lib.Augmentation.none())
    model_lib.compile_model(model, 10, 1e-3)
    assert train_throughput.jit_state(model, args.jit_compile) == {
        "requested": "true", "resolved": True, "if_true": True}


def result(backend, train_pipeline, train_memory):
    rates = {"pipeline": train_pipeline, "in_memory": train_memory,
             "in_memory_no_augmentation": train_memory}
    return {"backend": backend, "devices": ["cuda:0 (NVIDIA H200)"], "rates": {"train": rates}}


def test_the_targets_are_judged_on_what_was_measured():
    assert gpu.targets([result("jax", 15_500, 16_000),
                        {"backend": "tensorflow", "error": "tensorflow is not installed"}]) == [
        "target JAX train (default augmentation, pipeline) >= 15,000 img/s: met: 15,500 img/s "
        "on cuda:0 (NVIDIA H200)",
        "target jax train: real pipeline >= 90% of in-memory: met: 0.97"]
    assert gpu.targets([result("jax", None, 9_000)]) == [
        "target JAX train (default augmentation, in-memory) >= 15,000 img/s: NOT met: "
        "9,000 img/s on cuda:0 (NVIDIA H200)",
        "target jax train: real pipeline >= 90% of in-memory: not measured (no TensorFlow, "
        "so no tf.data)"]


def test_head_phase_arms_time_and_score_each_way(tmp_path, tiny_dataset):
    """Both arms of bench.head_phase on the tiny data set: on cached features and on images,
    each timed and scored on the test split."""
    from test_training import calibrated_backbone

    weights = calibrated_backbone(tmp_path / "backbone.weights.h5")
    on_features, on_images = (head_phase.run_arm(str(tiny_dataset), views, 1, 1, weights)
                              for views in (1, 0))
    for result, views in ((on_features, 1), (on_images, 0)):
        assert (result["views"], result["seed"]) == (views, 1)
        assert result["seconds"] > 0 and 0 <= result["test_accuracy"] <= 1
        assert 0 <= result["val_accuracy"] <= 1


def test_preprocess_benchmark_measures_hashing_and_grouping(tmp_path):
    from bench import preprocess_throughput
    from components import configs

    files = sorted(configs.SAMPLE_DATA_DIR.glob("Bag/*.png"))[:3]
    assert preprocess_throughput.hash_rate(files) > 0
    groups, grouped, largest, seconds = preprocess_throughput.groups_found(
        [[0, 0], [1, 1], [2**64 - 1] * 2, [2**32 - 1] * 2])  # 0 and 1 are 1 bit apart.
    assert (groups, grouped, largest) == (1, 2, 2) and seconds >= 0
