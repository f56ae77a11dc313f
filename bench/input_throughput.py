"""Input pipeline throughput (images/s, second epoch, batch 32): our TFRecord reader
(tfrecords.load_split, as train/fine_tune/evaluate use it) versus
keras.utils.image_dataset_from_directory reading the same 640x640 JPEG photos at 160x160.

The photos are Fashion-MNIST (Debian package dataset-fashion-mnist) upscaled to 640x640 RGB
JPEG (quality 90), made once into --images-dir; the preprocess step turns them into 160 px
TFRecords. Each pipeline runs one untimed epoch (tracing, filling a cache), then the
pipelines take turns for --repeats epochs and each keeps its best. Targets: the reader at
least 5x the directory loader without caching, at least 10x with the decoded images cached.

    .venv/bin/python -m bench.input_throughput [--count 2000] [--repeats 3]
"""
import tempfile
import time

import keras
import tensorflow as tf

from bench.common import photos_from_arguments
from components import preprocess, tfrecords

SIZE = 160
BATCH = 32


def epoch_seconds(dataset: tf.data.Dataset) -> tuple[int, float]:
    started = time.perf_counter()
    images = sum(int(images.shape[0]) for images, _ in dataset)
    return images, time.perf_counter() - started


def main() -> None:
    args, root = photos_from_arguments(__doc__, 2000, "timed epochs; the best counts")
    with tempfile.TemporaryDirectory() as tmp:
        # Nearly everything in the train split, which training reads.
        preprocess.run(str(root), f"{tmp}/data", f"{tmp}/m.parquet", SIZE, 0.98, 0.01, 0.01,
                       42)

        def from_directory() -> tf.data.Dataset:
            return keras.utils.image_dataset_from_directory(
                root, image_size=(SIZE, SIZE), batch_size=BATCH, seed=0, verbose=False)

        pipelines = {
            "image_dataset_from_directory": from_directory(),
            "image_dataset_from_directory, .cache()": from_directory().cache(),
            "load_split, uncached": tfrecords.load_split(f"{tmp}/data", "train", BATCH,
                                                         training=True, cache_budget_mb=0,
                                                         seed=0),
            "load_split, cached": tfrecords.load_split(f"{tmp}/data", "train", BATCH,
                                                       training=True, seed=0),
        }
        for dataset in pipelines.values():
            epoch_seconds(dataset)
        rate = dict.fromkeys(pipelines, 0.0)
        for _ in range(args.repeats):
            for name, dataset in pipelines.items():
                images, seconds = epoch_seconds(dataset)
                rate[name] = max(rate[name], images / seconds)
    baseline = rate["image_dataset_from_directory"]
    print(f"\n{args.count} photos 640x640 JPEG -> {SIZE}x{SIZE}, batch {BATCH}, "
          f"best of {args.repeats} epochs after the first")
    for name, value in rate.items():
        print(f"  {name:40s} {value:9.0f} images/s  {value / baseline:6.1f}x")


if __name__ == "__main__":
    main()
