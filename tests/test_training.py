import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from components import (backbones, features, model as model_lib, storage,
                        tfrecords, training)
from components.errors import TlpError


def test_target_accuracy_callback_stops_training():
    x = np.repeat(np.eye(2, dtype="float32"), 8, axis=0)
    y = np.repeat(np.array([0, 1]), 8)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    history = model.fit(x, y, validation_data=(x, y), epochs=50, verbose=0,
                        callbacks=[training.TargetAccuracyStop(1.0)])
    assert len(history.epoch) < 50
    assert history.history["val_accuracy"][-1] == 1.0
    assert all(a < 1.0 for a in history.history["val_accuracy"][:-1])


def test_train_then_fine_tune_continues_the_epoch_count(tmp_path, tiny_dataset, capsys):
    options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01)
    train_history = training.train(
        str(tiny_dataset), str(tmp_path / "m.keras"), str(tmp_path / "h.json"), "MobileNetV2",
        "none", model_lib.Head(), model_lib.Augmentation(), 1e-3, options,
        str(tmp_path / "state1"), str(tmp_path / "tensorboard"),
        initial_model_path=str(tmp_path / "initial.keras"), head_feature_views=2)
    out = capsys.readouterr().out
    assert "weights=none: training every backbone layer" in out
    # Cached features do not apply to a backbone that trains: end-to-end on images.
    assert "head_feature_views=2 ignored" in out
    assert "cached features" not in out
    trained = keras.models.load_model(tmp_path / "m.keras")
    assert all(layer.trainable for layer in model_lib.backbone_of(trained).layers)
    assert train_history["epoch"] == [1, 2]
    assert len(train_history["epoch_seconds"]) == 2 and min(train_history["epoch_seconds"]) > 0
    # The model as built, before training: same architecture, the head not yet trained.
    initial = keras.models.load_model(tmp_path / "initial.keras")
    assert [layer.name for layer in initial.layers] == [layer.name for layer in trained.layers]
    assert not np.allclose(initial.get_layer("classifier").get_weights()[0],
                           trained.get_layer("classifier").get_weights()[0])
    assert json.loads((tmp_path / "h.json").read_text()) == train_history
    assert not (tmp_path / "state1").exists()  # Finished: no state left behind.
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    tuned = training.fine_tune(
        str(tiny_dataset), str(tmp_path / "m.keras"), str(tmp_path / "h.json"),
        str(tmp_path / "m2.keras"), str(tmp_path / "h2.json"), layers="auto",
        learning_rate=1e-5, options=options, state_dir=str(tmp_path / "state2"),
        similarity="different")
    assert "domain different: unfreezing 0.3" in capsys.readouterr().out
    assert tuned["epoch"] == [3, 4]
    assert set(tuned) >= {"loss", "val_loss", "accuracy", "val_accuracy", "learning_rate"}
    model = keras.models.load_model(tmp_path / "m2.keras")
    assert sum(layer.trainable for layer in model_lib.backbone_of(model).layers) > 0


def calibrated_backbone(path: Path) -> str:
    """A random MobileNetV2 (32 px) whose BatchNorm statistics are those of one batch of noise,
    saved as a weights file: frozen, it gives features of order 1 (an untouched random one
    gives 1e-12, from which no head learns anything)."""
    base = backbones.build_backbone("MobileNetV2", 32, "none")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    base(np.random.default_rng(0).uniform(-1, 1, (16, 32, 32, 3)).astype("float32"),
         training=True)
    base.save_weights(str(path))
    return str(path)


def train_with_views(tmp_path, dataset, weights, name, views, cache_budget_mb=2048,
                     **options) -> dict:
    options = training.FitOptions(**{"epochs": 3, "batch_size": 8, "target_accuracy": 1.01,
                                     "cache_budget_mb": cache_budget_mb, **options})
    return training.train(str(dataset), str(tmp_path / f"{name}.keras"),
                          str(tmp_path / f"{name}.json"), "MobileNetV2", weights,
                          model_lib.Head(), model_lib.Augmentation(), 1e-2, options,
                          str(tmp_path / f"{name}.state"), str(tmp_path / f"{name}.tb"),
                          head_feature_views=views)


def test_head_phase_on_cached_features_trains_the_saved_full_model(tmp_path, tiny_dataset,
                                                                    capsys):
    """The head trains on cached features, in memory or (tiny budget) on disk with the same
    result; the saved full model is the head that trained (shared weights): on the
    validation images it has the best epoch's val_loss of the history."""
    weights = calibrated_backbone(tmp_path / "backbone.weights.h5")
    in_memory = train_with_views(tmp_path, tiny_dataset, weights, "memory", 2)
    out = capsys.readouterr().out
    assert ("train: head on cached features: 2 augmented view(s) of 18 train images + 6 "
            "validation, 1280 features each, in memory") in out
    on_disk = train_with_views(tmp_path, tiny_dataset, weights, "disk", 2, cache_budget_mb=0)
    assert "1280 features each, on local disk" in capsys.readouterr().out
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose(on_disk[key], in_memory[key], rtol=1e-5)
    assert in_memory["epoch"] == [1, 2, 3]
    assert in_memory["loss"][-1] < in_memory["loss"][0]  # It learns.
    saved = keras.models.load_model(tmp_path / "memory.keras")
    assert [layer.name for layer in saved.layers][:4] == [
        "image", "augmentation", "preprocessing", "backbone"]
    validation = tfrecords.load_split(tiny_dataset, "validation", 8, training=False)
    model_lib.compile_model(saved, 3, 1e-3)
    loss = saved.evaluate(validation, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(min(in_memory["val_loss"]), rel=1e-4)
    # Through the head model over the saved model's own layers, the same predictions.
    images = np.concatenate([x for x, _ in validation.as_numpy_iterator()])
    head = features.head_model(saved)
    unaugmented = (images, np.zeros(len(images), bool))
    through_head = head.predict(
        features.FeatureExtractor(saved).predict(unaugmented, verbose=0), verbose=0)
    np.testing.assert_allclose(through_head, saved.predict(images, verbose=0), atol=1e-6)
    assert not (tmp_path / "memory.state").exists() and not (tmp_path / "disk.state").exists()


def test_zero_views_trains_on_images_with_the_same_history_keys(tmp_path, tiny_dataset,
                                                                capsys):
    weights = calibrated_backbone(tmp_path / "backbone.weights.h5")
    on_images = train_with_views(tmp_path, tiny_dataset, weights, "images", 0, epochs=2)
    assert "cached features" not in capsys.readouterr().out
    on_features = train_with_views(tmp_path, tiny_dataset, weights, "features", 2, epochs=2,
                                   lr_schedule="cosine")
    assert set(on_features) == set(on_images) >= {
        "epoch", "loss", "val_loss", "accuracy", "val_accuracy", "learning_rate",
        "epoch_seconds"}
    assert on_features["learning_rate"][1] < 1e-2  # The schedule works on the head model.
    assert list((tmp_path / "features.tb").rglob("events.out.tfevents.*"))


def test_views_differ_under_augmentation_and_repeat_with_the_seed(tmp_path, tiny_dataset):
    """Each view is a fresh augmentation; validation features are not augmented; a process
    started again with the same seed extracts the same features (what resuming relies on)."""
    weights = calibrated_backbone(tmp_path / "backbone.weights.h5")

    def extract(folder: Path, augmentation: model_lib.Augmentation):
        keras.utils.set_random_seed(7)
        model = model_lib.build_model(3, "MobileNetV2", 32, weights,
                                      augmentation=augmentation)
        folder.mkdir()
        cached = features.extract(model, str(tiny_dataset), 2, 8, 8, 2048, str(folder))
        views = [np.fromfile(path, np.float32).reshape(18, 1280)
                 for path in cached.train_files]
        return cached, views, np.fromfile(cached.validation_file, np.float32)

    strong = model_lib.Augmentation(flip="horizontal", rotation=0.1, zoom=0.1)
    cached, views, validation = extract(tmp_path / "a", strong)
    assert cached.in_memory and cached.shape == (1280,)
    assert np.abs(views[0] - views[1]).max() > 0.01 * np.abs(views[0]).max()
    _, again, validation_again = extract(tmp_path / "b", strong)
    np.testing.assert_array_equal(views[0], again[0])
    np.testing.assert_array_equal(views[1], again[1])
    np.testing.assert_array_equal(validation, validation_again)
    # Labels in the order the split is read, the same for every view.
    labels = np.concatenate([y for _, y in tfrecords.load_split(
        tiny_dataset, "train", 8, training=False).as_numpy_iterator()])
    np.testing.assert_array_equal(cached.train_labels, labels)
    # Without augmentation the views are the unaugmented features.
    _, plain, _ = extract(tmp_path / "c", model_lib.Augmentation.none())
    np.testing.assert_allclose(plain[0], plain[1], atol=1e-6)
    assert np.abs(views[0] - plain[0]).max() > 0.01 * np.abs(plain[0]).max()


def test_each_epoch_draws_one_view_per_image(tmp_path):
    """The train dataset yields every image once per epoch, shuffled, its view drawn at
    random: over epochs both views of an image appear."""
    folder = tmp_path
    views = [np.full((6, 2), view, np.float32) + np.arange(6, dtype=np.float32)[:, None] * 10
             for view in range(2)]
    for view, array in enumerate(views):
        array.tofile(folder / f"v{view}.f32")
    cached = features.CachedFeatures([str(folder / "v0.f32"), str(folder / "v1.f32")],
                                     str(folder / "v0.f32"), np.arange(6), np.arange(6),
                                     (2,), True, 0.0, 0.0)
    dataset = features.train_dataset(cached, 4, seed=1)
    seen = set()
    for _ in range(6):
        x, y = map(np.concatenate, zip(*dataset.as_numpy_iterator()))
        assert sorted(y) == list(range(6))
        np.testing.assert_array_equal(x[:, 0] // 10, y)  # Each row is its image's.
        seen |= {(int(label), int(row[0] % 10)) for label, row in zip(y, x)}
    assert seen == {(image, view) for image in range(6) for view in range(2)}


def test_fit_ends_with_the_best_validation_weights(tmp_path, tiny_dataset):
    """After fine-tuning with a huge learning rate, the model that comes out is never worse
    on validation than the best checkpoint (here: the weights that went in)."""
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    model_lib.compile_model(model, 3, 1e-3)
    from components import tfrecords

    validation = tfrecords.load_split(tiny_dataset, "validation", 8, training=False)
    before = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    model_lib.unfreeze_top_layers(model, 1000)
    options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01)
    history = training.fit(model, str(tiny_dataset), options, learning_rate=50.0,
                           state_dir=str(tmp_path / "state"), initial_epoch=1,
                           best_val_loss=before)
    after = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    assert after <= min([before] + history["val_loss"]) + 1e-4


def test_schedules_warm_up_and_decay():
    assert training.learning_rate_schedule(0.1, "constant", 10, 5) == 0.1
    cosine = training.learning_rate_schedule(0.1, "cosine", 10, 5, warmup_epochs=1)
    assert float(cosine(0)) == pytest.approx(0.001)
    assert float(cosine(10)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-6)
    warm_constant = training.learning_rate_schedule(0.1, "constant", 10, 5, warmup_epochs=2)
    assert float(warm_constant(5)) < 0.1 and float(warm_constant(45)) == pytest.approx(0.1)
    step = training.learning_rate_schedule(0.1, "step", 10, 6)
    assert [float(step(s)) for s in (19, 21, 41)] == pytest.approx([0.1, 0.01, 0.001])


@pytest.mark.parametrize("schedule, warmup, message", [
    ("linear", 0, "lr_schedule='linear'"), ("step", 1, "warmup_epochs works with")])
def test_bad_schedules_are_rejected(schedule, warmup, message):
    with pytest.raises(TlpError, match=message):
        training.learning_rate_schedule(0.1, schedule, 10, 5, warmup)


def test_class_weights_follow_imbalance():
    assert training.class_weights([50, 50, 45], "auto") is None
    assert training.class_weights([90, 10], "auto") == pytest.approx({0: 100 / 180, 1: 5.0})
    assert training.class_weights([50, 50], "balanced") == {0: 1.0, 1: 1.0}
    assert training.class_weights([90, 10], "none") is None
    with pytest.raises(TlpError, match="class_weighting='often'"):
        training.class_weights([1, 1], "often")


def test_learning_rate_is_logged_under_a_schedule(tmp_path, tiny_dataset):
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01,
                                  optimizer="sgd", lr_schedule="cosine")
    history = training.fit(model, str(tiny_dataset), options, learning_rate=0.01,
                           state_dir=str(tmp_path / "state"))
    assert history["learning_rate"][0] < 0.01 and history["learning_rate"][1] < 1e-6


TRAIN_SCRIPT = """
import sys
import time
import keras
from components import model as model_lib, training
dataset, out, state, weights, views = sys.argv[1:]
if int(views):  # Epochs on cached features take milliseconds: give the kill time to land.
    class Slow(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(0.1)
    make_callbacks = training.make_callbacks
    training.make_callbacks = lambda *args: make_callbacks(*args) + [Slow()]
options = training.FitOptions(epochs=12, batch_size=8, early_stopping_patience=100,
                              target_accuracy=1.01)
training.train(dataset, out + "/m.keras", out + "/h.json", "MobileNetV2", weights,
               model_lib.Head(), model_lib.Augmentation(), 1e-3, options, state,
               tensorboard_dir=out + "/tensorboard", head_feature_views=int(views))
"""


def completed_epochs(state: str) -> int:
    """Epochs a killed run can resume after: the local history's, or the newest complete
    snapshot's in a bucket."""
    if not storage.is_remote(state):
        return len(training.read_csv_history(Path(state, training.HISTORY_CSV)).get("epoch", []))
    markers = [uri for uri in storage.list_files(state)
               if uri.endswith("/" + training.SNAPSHOT_COMPLETE)]
    return max((int(uri.split("/")[-2].split("-")[1]) for uri in markers), default=0)


def tensorboard_epochs(log_dir: Path) -> list[int]:
    """The epochs with a training loss in the TensorBoard logs, sorted (repeats kept)."""
    import tensorflow as tf

    return sorted(event.step for path in log_dir.glob("train/events.out.tfevents.*")
                  for event in tf.compat.v1.train.summary_iterator(str(path))
                  if any(value.tag == "epoch_loss" for value in event.summary.value))


@pytest.mark.parametrize("backend, location, views", [
    ("tensorflow", "local", 0), ("jax", "local", 0), ("tensorflow", "s3", 0),
    ("tensorflow", "gcs", 0), ("tensorflow", "local", 2), ("jax", "s3", 2)])
def test_a_killed_training_resumes_after_its_last_completed_epoch(tmp_path, tiny_dataset,
                                                                  backend, location, views,
                                                                  request):
    """As on a preempted spot node: SIGKILL part-way, start again, it carries on. With the
    state in a bucket the second process starts on an empty disk, as a pod on another node.
    With head_feature_views the restarted process extracts the features again and resumes
    the head from its backup."""
    remote = location != "local"
    weights = "none"
    # A frozen backbone: JAX compiles in seconds rather than minutes, and each epoch's backup
    # sent to the bucket holds no optimizer state for it (9 MB rather than 27 MB).
    if backend == "jax" or remote or views:
        weights = str(tmp_path / "backbone.weights.h5")
        backbones.build_backbone("MobileNetV2", 32, "none").save_weights(weights)
    state = (request.getfixturevalue(f"{location}_bucket") + "/run/model.state" if remote
             else str(tmp_path / "state"))
    command = [sys.executable, "-c", TRAIN_SCRIPT, str(tiny_dataset), str(tmp_path), state,
               weights, str(views)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": backend}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:  # The first epoch, tracing included, took 2 min here under other jobs' load.
        deadline = time.monotonic() + 300
        while completed_epochs(state) < 3:
            assert first.poll() is None and time.monotonic() < deadline, "no epochs completed"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_after = completed_epochs(state)
    assert killed_after < 12 and not (tmp_path / "m.keras").exists()
    if remote:
        shutil.rmtree(tmp_path / "tensorboard")

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "epoch(s) already done" in second.stdout
    assert ("head on cached features: 2 augmented view(s)" in second.stdout) == bool(views)
    epochs_run = [int(line.split()[1].split("/")[0]) for line in second.stdout.splitlines()
                  if line.startswith("Epoch ")]
    # Locally the history may be one epoch ahead of the backup (killed between the two).
    first_epochs = (killed_after + 1,) if remote else (killed_after, killed_after + 1)
    assert epochs_run[0] in first_epochs and epochs_run[-1] == 12
    history = json.loads((tmp_path / "h.json").read_text())
    assert history["epoch"] == list(range(1, 13))
    # Every epoch in the logs, those of the killed process brought back from the bucket.
    assert sorted(set(tensorboard_epochs(tmp_path / "tensorboard"))) == list(range(12))
    assert not storage.exists(state)


# Two replicas on the CPU, set up before the backend starts: TensorFlow splits the CPU into
# two logical devices; JAX gets two host devices from XLA_FLAGS (set by the test).
MULTI_DEVICE_SCRIPT = """
import sys
import keras
dataset, out, weights = sys.argv[1:]
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
else:
    devices = keras.distribution.list_devices("cpu")
from components import accelerators, model as model_lib, training
accelerators.replica_devices = lambda: devices  # As if these were GPUs.
options = training.FitOptions(epochs=2, batch_size=8, target_accuracy=1.01)
training.train(dataset, out + "/m.keras", out + "/h.json", "MobileNetV2", weights,
               model_lib.Head(), model_lib.Augmentation(), 1e-3, options, out + "/state1",
               tensorboard_dir=out + "/tensorboard", head_feature_views=2)
training.fine_tune(dataset, out + "/m.keras", out + "/h.json", out + "/m2.keras",
                   out + "/h2.json", "10", 1e-5, options, out + "/state2",
                   tensorboard_dir=out + "/tensorboard")
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_train_and_fine_tune_on_two_replicas(tmp_path, tiny_dataset, backend):
    """The multi-GPU path (MirroredStrategy, DataParallel) on two CPU devices, with every
    callback, train on cached features and fine_tune on images; the saved models load and
    predict outside any strategy. The validation split
    (6 images) is smaller than a batch (8), which Keras's build under MirroredStrategy once
    failed on."""
    weights = str(tmp_path / "backbone.weights.h5")  # Frozen backbone: JAX compiles fast.
    backbones.build_backbone("MobileNetV2", 32, "none").save_weights(weights)
    run = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT, str(tiny_dataset), str(tmp_path), weights],
        # oneDNN off: on Intel CPUs its convolution returns a wrong shape for an empty batch,
        # which a replica gets from a last partial batch under MirroredStrategy (train: 18
        # images in batches of 8, the last 2 split [2, 0]). GPUs do not use oneDNN.
        env={**os.environ, "KERAS_BACKEND": backend, "TF_ENABLE_ONEDNN_OPTS": "0",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("data parallel over 2 replicas") == 2  # Train, fine_tune.
    # train's head on features extracted on both replicas; fine_tune on images.
    assert "head on cached features: 2 augmented view(s) of 18 train images" in run.stdout
    images = np.zeros((2, 32, 32, 3), "uint8")
    for model_file, history_file, epochs in [("m.keras", "h.json", [1, 2]),
                                             ("m2.keras", "h2.json", [3, 4])]:
        assert json.loads((tmp_path / history_file).read_text())["epoch"] == epochs
        predictions = keras.models.load_model(tmp_path / model_file).predict(images, verbose=0)
        np.testing.assert_allclose(predictions.sum(axis=1), [1.0, 1.0], rtol=1e-5)


def test_state_in_a_bucket_resumes_from_the_newest_complete_snapshot(tmp_path, s3_bucket):
    """A kill while a snapshot was uploading leaves it without its marker: the one before is
    restored, and both are reported for removal."""
    remote = s3_bucket + "/m.state"
    for name, data in {"best-0002.weights.h5": b"best 2", "epoch-0003/history.csv": b"3 rows",
                       "epoch-0003/backup/latest.weights.h5": b"backup 3",
                       "epoch-0003/complete": b"", "epoch-0004/history.csv": b"4 rows",
                       "tensorboard/train/events.out.tfevents.1": b"events"}.items():
        storage.write_bytes(f"{remote}/{name}", data)
    snapshots = training.restore_state(remote, str(tmp_path / "state"), str(tmp_path / "tb"))
    assert snapshots == ["epoch-0003", "epoch-0004"]
    restored = {p.relative_to(tmp_path).as_posix(): p.read_bytes()
                for p in tmp_path.rglob("*") if p.is_file()}
    assert restored == {"state/best-0002.weights.h5": b"best 2", "state/history.csv": b"3 rows",
                        "state/backup/latest.weights.h5": b"backup 3",
                        "tb/train/events.out.tfevents.1": b"events"}


def test_state_beside_a_minio_artifact_is_in_s3_at_the_configured_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    uri = "minio://mlpipeline/v2/artifacts/p/run/train/model"
    with pytest.raises(TlpError, match="AWS_ENDPOINT_URL_S3.*--s3-endpoint"):
        training.state_location(uri, "/minio/mlpipeline/v2/artifacts/p/run/train/model")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio-service.kubeflow:9000")
    assert training.state_location(uri, "/minio/mlpipeline/v2/artifacts/p/run/train/model") \
        == "s3://mlpipeline/v2/artifacts/p/run/train/model.state"
    assert training.state_location("gs://b/r/train/model", "/gcs/b/r/train/model") \
        == "gs://b/r/train/model.state"
    assert training.state_location("/root/r/train/model", "/root/r/train/model") \
        == "/root/r/train/model.state"


def test_a_checkpoint_spoilt_mid_write_falls_back_to_the_one_before(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.ones((2, 1)), np.zeros(1)])
    model.save_weights(str(tmp_path / "best-0001.weights.h5"))
    (tmp_path / "best-0002.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    model.layers[0].set_weights([np.zeros((2, 1)), np.zeros(1)])
    training.load_best_weights(model, str(tmp_path))
    np.testing.assert_array_equal(model.layers[0].get_weights()[0], np.ones((2, 1)))


def test_fit_options_come_from_the_pipeline_parameters_by_name():
    from pipelines.pipeline import create_pipeline

    parameters = {name: spec.default for name, spec in
                  create_pipeline().component_spec.inputs.items()}
    options = training.FitOptions.from_parameters(parameters)
    assert options.optimizer == parameters["optimizer"]
    assert options.steps_per_execution == parameters["steps_per_execution"]


def test_a_model_trained_from_scratch_beats_chance_in_inference_mode(tmp_path):
    """weights=none on the bundled Fashion-MNIST sample (10 classes). With keras.applications'
    BatchNorm momentum (0.999) the training accuracy climbs the same way, but the moving
    statistics stay near their initial values and validation stays at chance (0.1)."""
    from components import configs, preprocess, tfrecords

    dataset = tmp_path / "dataset"
    preprocess.run(str(configs.SAMPLE_DATA_DIR), str(dataset), str(tmp_path / "m.parquet"), 32,
                   0.8, 0.1, 0.1, seed=1)
    options = training.FitOptions(epochs=5, target_accuracy=1.01, early_stopping_patience=5)
    history = training.train(str(dataset), str(tmp_path / "m.keras"), str(tmp_path / "h.json"),
                             "MobileNetV2", "none", model_lib.Head(),
                             model_lib.Augmentation.none(), 1e-3, options,
                             str(tmp_path / "state"))
    assert history["accuracy"][-1] > 0.5
    model = keras.models.load_model(tmp_path / "m.keras")
    batchnorm = [layer for layer in model_lib.backbone_of(model).layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
    assert {layer.momentum for layer in batchnorm} == {configs.FROM_SCRATCH_BATCH_NORM_MOMENTUM}
    model_lib.compile_model(model, 10, 1e-3)
    validation = tfrecords.load_split(dataset, "validation", 32, training=False)
    assert model.evaluate(validation, verbose=0, return_dict=True)["accuracy"] > 0.35


def test_a_backup_with_an_emptied_epoch_file_falls_back_to_the_previous_one(tmp_path):
    """A kill while the backup's epoch file is rewritten leaves it empty (it is truncated
    first): the restart resumes from the backup before, as for a torn weights file."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = training.BackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
    backup.set_model(model)
    for epoch in (0, 1):  # Two completed epochs: a backup and the one before it.
        backup.on_epoch_end(epoch)
    metadata = tmp_path / "backup" / "training_metadata.json"
    assert json.loads(metadata.read_text())["epoch"] == 2
    metadata.write_text("")
    restarted = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    restarted.compile(optimizer="sgd", loss="mse")
    resume = training.BackupAndRestore(str(tmp_path / "backup"), double_checkpoint=True)
    resume.set_model(restarted)
    resume.on_train_begin()
    assert restarted._initial_epoch == 1
