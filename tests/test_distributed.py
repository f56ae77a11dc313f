"""Training over several processes as Kubeflow Trainer's jax-distributed runtime runs it: two
real JAX processes on 127.0.0.1, each given the JAX_* variables the runtime sets, run the
TrainJob's command (components/node_training.py) with the step's own code. Marked
`multiprocess` (`pytest -m multiprocess` selects them)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from components import backbones, configs, distributed, tfrecords, trainjob
from components.errors import TlpError
from local_servers import free_port
from pipelines.pipeline import create_pipeline


def test_processes_come_from_the_runtimes_variables():
    assert distributed.from_environment({}) is None
    processes = distributed.from_environment({
        "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2",
        "JAX_COORDINATOR_ADDRESS": "tlp-train-1-node-0-0.tlp-train-1:29500"})
    assert processes == distributed.Processes(4, 2, "tlp-train-1-node-0-0.tlp-train-1:29500")
    assert not processes.chief
    # A separate port, where a runtime sets one, joins a bare address.
    assert distributed.from_environment({
        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0", "JAX_COORDINATOR_ADDRESS": "head",
        "JAX_COORDINATOR_PORT": "1234"}).coordinator == "head:1234"
    with pytest.raises(TlpError, match="JAX_COORDINATOR_ADDRESS unset"):
        distributed.from_environment({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"})
    with pytest.raises(TlpError, match=r"JAX_PROCESS_ID=2 is not in \[0, 2\)"):
        distributed.from_environment({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2",
                                      "JAX_COORDINATOR_ADDRESS": "head:1"})


def test_each_process_reads_its_own_shards_or_its_share_of_the_records():
    files = [f"train-{i}" for i in range(5)]
    assert distributed.own_shards(files, 0, 1) == (files, False)
    assert distributed.own_shards(files, 0, 2) == (["train-0", "train-2", "train-4"], False)
    assert distributed.own_shards(files, 1, 2) == (["train-1", "train-3"], False)
    assert distributed.own_shards(files[:1], 1, 2) == (files[:1], True)


def split_shards(dataset: Path, shards: int) -> None:
    """Rewrites the train and validation splits as `shards` shards each (the tiny dataset has
    one per split), so that each process has shards of its own."""
    metadata = tfrecords.read_metadata(dataset)
    for split in ("train", "validation"):
        records = [record.numpy() for file in tfrecords.shard_files(dataset, split, metadata)
                   for record in tf.data.TFRecordDataset(file)]
        for file in tfrecords.shard_files(dataset, split, metadata):
            os.remove(file)
        names = [f"{split}-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
        for i, name in enumerate(names):
            with tf.io.TFRecordWriter(str(dataset / name)) as writer:
                for record in records[i::shards]:
                    writer.write(record)
        metadata["shards"][split] = names
    (dataset / configs.METADATA_FILE).write_text(json.dumps(metadata))


def node_spec(dataset: Path, out: Path, weights: str, epochs: int) -> dict:
    """What the train step sends its nodes (trainjob.node_spec), with local paths as URIs."""
    parameters = {name: spec.default
                  for name, spec in create_pipeline().component_spec.inputs.items()}
    parameters.update(backend="jax", backbone="MobileNetV2", weights=weights, epochs=epochs,
                      batch_size=8, target_accuracy=1.01, early_stopping_patience=epochs)
    outputs = {"model": "model.keras", "history": "history", "tensorboard": "tensorboard",
               "initial_model": "initial_model.keras"}
    return trainjob.node_spec("train", parameters, {"dataset": str(dataset)},
                              {name: str(out / file) for name, file in outputs.items()},
                              str(out / "model.state"))


def start_nodes(spec: dict, logs: Path, count: int = 2) -> list[subprocess.Popen]:
    """`count` processes of the TrainJob's command, each with the variables the runtime sets
    (JAX_PLATFORMS=cpu: one CPU device each)."""
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for index in range(count):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
               **distributed.Processes(count, index, coordinator).environment()}
        with open(logs / f"node-{index}.log", "ab") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "components.node_training", json.dumps(spec)],
                env=env, cwd=configs.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
    return processes


def wait_all(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [process.returncode for process in processes]


@pytest.fixture
def sharded_dataset(tiny_dataset: Path) -> Path:
    split_shards(tiny_dataset, 2)
    return tiny_dataset


@pytest.fixture
def frozen_weights(tmp_path: Path) -> str:
    """A frozen pretrained-style backbone: JAX compiles in seconds rather than minutes."""
    path = str(tmp_path / "backbone.weights.h5")
    backbones.build_backbone("MobileNetV2", 32, "none").save_weights(path)
    return path


@pytest.mark.multiprocess
def test_two_processes_train_and_fine_tune_one_model(tmp_path, sharded_dataset,
                                                    frozen_weights):
    out = tmp_path / "out"
    spec = node_spec(sharded_dataset, out, frozen_weights, epochs=1)
    nodes = start_nodes(spec, tmp_path)
    codes = wait_all(nodes, 240)
    logs = [(tmp_path / f"node-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for index, log in enumerate(logs):
        assert f"distributed: process {index} of 2 (coordinator 127.0.0.1:" in log
        assert "1 local of 2 device(s)" in log
        assert "data parallel over 2 replicas" in log
        for split in ("train", "validation"):
            assert (f"process {index} of 2 reads {split} shards "
                    f"{split}-{index:05d}-of-00002.tfrecord") in log
    assert "outputs written" in logs[0] and "outputs written" not in logs[1]
    # One model, history and log folder, written by process 0; the state is gone.
    assert sorted(p.name for p in out.iterdir()) == ["history", "initial_model.keras",
                                                     "model.keras", "tensorboard"]
    assert json.loads((out / "history").read_text())["epoch"] == [1]
    import keras

    from components import augmentation  # noqa: F401  Registers RandomAffine for loading.

    model = keras.models.load_model(out / "model.keras")
    predictions = model.predict(np.zeros((2, 32, 32, 3), "uint8"), verbose=0)
    np.testing.assert_allclose(predictions.sum(axis=1), [1.0, 1.0], rtol=1e-5)

    # fine_tune's nodes, on the model and history train's nodes wrote.
    tuned = tmp_path / "tuned"
    spec = {**spec, "step": "fine_tune", "state": str(tuned / "model.state"),
            "parameters": {**spec["parameters"], "fine_tune_epochs": 1,
                           "fine_tune_layers": "10"},
            "inputs": {"dataset": str(sharded_dataset), "trained_model": str(out / "model.keras"),
                       "train_history": str(out / "history")},
            "outputs": {name: str(tuned / file) for name, file in
                        (("model", "model.keras"), ("history", "history"),
                         ("tensorboard", "tensorboard"))}}
    codes = wait_all(start_nodes(spec, tuned.parent), 240)
    assert codes == [0, 0], (tmp_path / "node-1.log").read_text()[-3000:]
    assert json.loads((tuned / "history").read_text())["epoch"] == [2]
    assert sorted(p.name for p in tuned.iterdir()) == ["history", "model.keras", "tensorboard"]


def completed_epochs(state: Path) -> int:
    """The newest epoch whose snapshot the chief completed (training.MirrorState)."""
    return max((int(path.parent.name.split("-")[1]) for path in state.glob("epoch-*/complete")),
               default=0)


@pytest.mark.multiprocess
def test_a_killed_node_fails_the_run_and_a_restart_resumes(tmp_path, sharded_dataset,
                                                           frozen_weights):
    """One process killed mid-run (a preempted node): the other cannot go on, and the
    TrainJob fails; started again (the KFP retry), both resume after the last epoch the
    chief completed."""
    out = tmp_path / "out"
    epochs = 8  # After the first, an epoch takes about a second (under load, more).
    spec = node_spec(sharded_dataset, out, frozen_weights, epochs=epochs)
    state = Path(spec["state"])
    first = start_nodes(spec, tmp_path)
    deadline = time.monotonic() + 240
    try:
        while completed_epochs(state) < 2:
            assert all(p.poll() is None for p in first) and time.monotonic() < deadline, \
                (tmp_path / "node-0.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        first[1].send_signal(signal.SIGKILL)
    # The survivor fails on its own once the coordinator notices; the runtime's failure
    # policy ends the others at once, as the test does here.
    first[0].send_signal(signal.SIGKILL)
    wait_all(first, 30)
    done = completed_epochs(state)
    assert done < epochs and not (out / "model.keras").exists()
    for index in range(2):
        (tmp_path / f"node-{index}.log").rename(tmp_path / f"first-{index}.log")

    codes = wait_all(start_nodes(spec, tmp_path), 240)
    logs = [(tmp_path / f"node-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for log in logs:
        assert "epoch(s) already done" in log
        epochs_run = [json.loads(line.split(" ", 1)[1])["epoch"] for line in log.splitlines()
                      if line.startswith(configs.EPOCH_MARKER + " ")]
        assert epochs_run[0] > 1 and epochs_run[-1] == epochs
    assert json.loads((out / "history").read_text())["epoch"] == list(range(1, epochs + 1))
    assert not state.exists()
