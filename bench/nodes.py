"""The train step over several JAX processes against one, side by side in one run: the
TrainJob's own command (components/node_training.py) on 127.0.0.1, each process given the
JAX_* variables Kubeflow Trainer's jax-distributed runtime sets, one CPU device each.

    .venv/bin/python -m bench.nodes [--processes 1 2] [--epochs 4] [--image-size 96]

The bundled sample is preprocessed at image_size into 1 MB shards (several per split, so
each process reads its own); MobileNetV2 with a frozen random-initialised backbone trains
its head end-to-end on the images (head_feature_views 0, as over several nodes), global
batch 32. Prints per arm the first epoch (compilation included) and the median of the
others, as process 0 logs them (epoch_seconds, validation included)."""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from components import configs, distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(spec: dict, processes: int) -> list[float]:
    """Runs `processes` processes of node_training; process 0's seconds per epoch."""
    coordinator = f"127.0.0.1:{_free_port()}"
    started = []
    for index in range(processes):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
               **distributed.Processes(processes, index, coordinator).environment()}
        started.append(subprocess.Popen(
            [sys.executable, "-m", "components.node_training", json.dumps(spec)], env=env,
            cwd=configs.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [process.communicate()[0] for process in started]
    if any(process.returncode for process in started):
        raise SystemExit("\n".join(output[-3000:] for output in outputs))
    return [json.loads(line.split(" ", 1)[1])["epoch_seconds"]
            for line in outputs[0].splitlines() if line.startswith(configs.EPOCH_MARKER + " ")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args(argv)
    from components import keras_backend

    keras_backend.select("jax")
    from components import backbones, preprocess, trainjob
    from pipelines.pipeline import create_pipeline

    with tempfile.TemporaryDirectory() as work:
        dataset = Path(work, "dataset")
        metadata = preprocess.run(str(configs.SAMPLE_DATA_DIR), str(dataset),
                                  str(Path(work, "manifest.parquet")), args.image_size, 0.8, 0.1,
                                  0.1, seed=configs.SEED, shard_size_mb=1)
        weights = str(Path(work, "backbone.weights.h5"))
        backbones.build_backbone("MobileNetV2", args.image_size, "none").save_weights(weights)
        parameters = {name: spec.default
                      for name, spec in create_pipeline().component_spec.inputs.items()}
        parameters.update(backend="jax", weights=weights, epochs=args.epochs,
                          head_feature_views=0, target_accuracy=1.01,
                          early_stopping_patience=args.epochs)
        print(f"{metadata['num_examples']} images at {args.image_size} px; shards: "
              + ", ".join(f"{split} {len(names)}" for split, names in metadata["shards"].items()))
        for processes in args.processes:
            out = Path(work, f"out-{processes}")
            spec = trainjob.node_spec(
                "train", parameters, {"dataset": str(dataset)},
                {"model": str(out / "model.keras"), "history": str(out / "history"),
                 "tensorboard": str(out / "tensorboard"),
                 "initial_model": str(out / "initial_model.keras")},
                str(out / "model.state"))
            seconds = run_arm(spec, processes)
            print(f"{processes} process(es): first epoch {seconds[0]:.1f} s, then median "
                  f"{statistics.median(seconds[1:]):.2f} s per epoch "
                  f"({', '.join(f'{s:.2f}' for s in seconds[1:])})", flush=True)


if __name__ == "__main__":
    main()
