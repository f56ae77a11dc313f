"""Training throughput: the real input pipeline versus the same model fed one batch
already in memory (the upper bound), for the train (frozen backbone) and fine_tune (top
layers unfrozen) phases, side by side in one run. Target: the real pipeline reaches at
least 90% of the in-memory bound.

    .venv/bin/python -m bench.train_throughput [--image-size 160] [--images-per-class 100]

Runs on whatever TensorFlow sees (CPU here; a GPU where there is one).
"""
import argparse
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from bench.common import write_dataset
from components import fashion_mnist, model as model_lib, tfrecords


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fine-tune-layers", default="30")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images, labels = fashion_mnist.load("train")
    chosen = fashion_mnist.first_per_class(labels, args.images_per_class)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(Path(tmp), {"train": (images[chosen], labels[chosen])},
                             args.image_size)
        count = len(chosen)
        real = tfrecords.load_split(data, "train", args.batch_size, training=True, seed=0)
        batch = next(iter(real))
        in_memory = tf.data.Dataset.from_tensors(batch).repeat(len(real))
        model = model_lib.build_model(10, "MobileNetV2", args.image_size, "none")
        print(f"devices: {[d.name for d in tf.config.list_logical_devices()]}")
        print(f"{count} images, {args.image_size} px, batch {args.batch_size}")
        print(f"{'phase':<10} {'pipeline img/s':>15} {'in-memory img/s':>16} {'ratio':>6}")
        for phase in ("train", "fine_tune"):
            if phase == "fine_tune":
                base = model_lib.backbone_of(model)
                model_lib.unfreeze_top_layers(
                    model, model_lib.layers_to_unfreeze(base, args.fine_tune_layers))
            model_lib.compile_model(model, 10, 1e-5)
            rates = best_rates(model, {"pipeline": (real, count),
                                       "in_memory": (in_memory, len(real) * args.batch_size)},
                               args.repeats)
            measured, bound = rates["pipeline"], rates["in_memory"]
            print(f"{phase:<10} {measured:>15.0f} {bound:>16.0f} {measured / bound:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
