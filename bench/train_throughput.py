"""Training throughput: the real input pipeline versus the same model fed one batch
already in memory (the upper bound), for the train (frozen backbone) and fine_tune (top
layers unfrozen) phases, side by side in one run, on each Keras backend asked for
(TensorFlow and JAX by default; tf.data feeds both). Target: the real pipeline reaches at
least 90% of the in-memory bound.

    .venv/bin/python -m bench.train_throughput [--backend tensorflow jax] [--image-size 160]

Each backend runs in its own process (Keras picks its backend once per process), one after
the other, on whatever it sees (CPU here; a GPU where there is one).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from bench.common import write_dataset
from components import configs, fashion_mnist, model as model_lib, tfrecords

PHASES = ("train", "fine_tune")


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started  # The last epoch's.


def images_per_second(model: keras.Model, dataset: tf.data.Dataset, images: int) -> float:
    timer = EpochTimer()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return images / timer.seconds


def best_rates(model: keras.Model, runs: dict[str, tuple[tf.data.Dataset, int]],
               repeats: int) -> dict[str, float]:
    """Best epoch rate (images/s) of each input, the inputs taking turns so that the
    machine's noise hits them alike; one untimed epoch each first pays for tracing and
    filling the cache."""
    for dataset, _ in runs.values():
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, (dataset, images) in runs.items():
            best[name] = max(best[name], images_per_second(model, dataset, images))
    return best


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """{phase: {'pipeline': img/s, 'in_memory': img/s}} on this process's backend."""
    images, labels = fashion_mnist.load("train")
    chosen = fashion_mnist.first_per_class(labels, args.images_per_class)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp), {"train": (images[chosen], labels[chosen])},
                             args.image_size)
        real = tfrecords.load_split(data, "train", args.batch_size, training=True, seed=0)
        in_memory = tf.data.Dataset.from_tensors(next(iter(real))).repeat(len(real))
        model = model_lib.build_model(10, "MobileNetV2", args.image_size, "none")
        for phase in PHASES:
            if phase == "fine_tune":
                base = model_lib.backbone_of(model)
                model_lib.unfreeze_top_layers(
                    model, model_lib.layers_to_unfreeze(base, args.fine_tune_layers))
            model_lib.compile_model(model, 10, 1e-5)
            results[phase] = best_rates(
                model, {"pipeline": (real, len(chosen)),
                        "in_memory": (in_memory, len(real) * args.batch_size)}, args.repeats)
    return results


def run_backend(backend: str, argv: list[str]) -> dict:
    """measure() in a fresh process on `backend`."""
    result = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--child", *argv],
                            env={**os.environ, "KERAS_BACKEND": backend},
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{backend} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", choices=configs.BACKENDS,
                        default=list(configs.BACKENDS))
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fine-tune-layers", default="30")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        devices = [device.name for device in tf.config.list_logical_devices()]
        print(json.dumps({"backend": keras.backend.backend(), "devices": devices,
                          "rates": measure(args)}))
        return
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
            if name not in ("backend", "child")]
    results = {backend: run_backend(backend, argv) for backend in args.backend}
    print(f"{args.images_per_class * 10} images, {args.image_size} px, batch {args.batch_size}, "
          f"fine_tune unfreezes {args.fine_tune_layers} layers; TensorFlow devices "
          f"{results[args.backend[0]]['devices']}")
    print(f"{'phase':<10} {'backend':<11} {'pipeline img/s':>15} {'in-memory img/s':>16} "
          f"{'ratio':>6}")
    for phase in PHASES:
        for backend, result in results.items():
            rates = result["rates"][phase]
            measured, bound = rates["pipeline"], rates["in_memory"]
            print(f"{phase:<10} {result['backend']:<11} {measured:>15.0f} {bound:>16.0f} "
                  f"{measured / bound:>6.2f}")


if __name__ == "__main__":
    main()
