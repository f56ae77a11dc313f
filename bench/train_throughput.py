"""Training throughput: the real input pipeline versus the same model fed one batch
already in memory (the upper bound), for the train (frozen backbone) and fine_tune (top
layers unfrozen) phases, side by side in one run. Target: the real pipeline reaches at
least 90% of the in-memory bound.

    .venv/bin/python -m bench.train_throughput [--image-size 160] [--images-per-class 200]

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
    """Fits two epochs and times the second (the first pays for tracing and caching)."""
    timer = EpochTimer()
    model.fit(dataset, epochs=2, verbose=0, shuffle=False, callbacks=[timer])
    return images / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images-per-class", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fine-tune-layers", default="30")
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
            bound = images_per_second(model, in_memory, len(real) * args.batch_size)
            measured = images_per_second(model, real, count)
            print(f"{phase:<10} {measured:>15.0f} {bound:>16.0f} {measured / bound:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
