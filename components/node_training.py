"""What every node of a train or fine_tune TrainJob runs (components/trainjob.py):

    python3 -m components.node_training SPEC

SPEC is JSON: {"step": "train" or "fine_tune", "parameters": the step's KFP parameters,
"inputs": {artifact name: URI}, "outputs": {artifact name: URI}, "state": URI}. The node
joins the others (the runtime's JAX_* variables, components/distributed.py), copies the
dataset shards it reads and the other inputs to a local folder, trains with the step's own
code (components/steps.py) and, on the chief, uploads the outputs to their URIs. The other
processes save to a local folder that is dropped: Keras's saves must run in every process.
A URI is a gs:// or s3:// one, or a local path (a test's processes on one machine).
"""
import json
import os
import posixpath
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from components import configs, distributed, keras_backend, storage
from components.errors import TlpError

TRAINED_SPLITS = ("train", "validation")


def fetch_dataset(uri: str, folder: Path, index: int, count: int) -> None:
    """The dataset's metadata and the train and validation shards this process reads."""
    metadata = json.loads(storage.read_bytes(storage.join(uri, configs.METADATA_FILE)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / configs.METADATA_FILE).write_text(json.dumps(metadata))
    for split in TRAINED_SPLITS:
        for name in distributed.own_shards(metadata["shards"][split], index, count)[0]:
            storage.download_file(storage.join(uri, name), folder / name)


def _local(root: Path, name: str, uri: str) -> str:
    """A local path for an artifact: its own file name, so its extension still tells the
    format (model.keras)."""
    return str(root / name / posixpath.basename(uri.rstrip("/")))


def run(spec: dict, environ: Mapping[str, str] = os.environ) -> None:
    step, parameters = spec["step"], spec["parameters"]
    processes = distributed.from_environment(environ)
    if processes is None:
        raise TlpError(f"{configs.JAX_NUM_PROCESSES_ENV} is unset: this command runs on the "
                       f"nodes of a TrainJob on Kubeflow Trainer's {configs.TRAINJOB_RUNTIME} "
                       "runtime, which sets it.")
    keras_backend.select(parameters["backend"])  # Before anything imports Keras.
    distributed.initialize(processes)
    from components import steps
    with tempfile.TemporaryDirectory(prefix="tlp-node-") as work:
        root = Path(work)
        files = {}
        for name, uri in spec["inputs"].items():
            files[name] = _local(root / "in", name, uri)
            if name == "dataset":
                fetch_dataset(uri, Path(files[name]), processes.index, processes.count)
            else:
                storage.download_file(uri, files[name])
        outputs = {name: _local(root / "out", name, uri) for name, uri in spec["outputs"].items()}
        for path in outputs.values():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        steps.STEPS[step](parameters, {**files, **outputs}, spec["state"])
        if processes.chief:
            for name, uri in spec["outputs"].items():
                if name in steps.FOLDER_OUTPUTS:
                    storage.upload_dir(outputs[name], uri)
                else:
                    storage.upload_file(outputs[name], uri)
            print(f"node_training: {step} outputs written to "
                  f"{', '.join(spec['outputs'].values())}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        run(json.loads(argv[1]))
    except TlpError as error:
        print(f"node_training: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
