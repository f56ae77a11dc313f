"""Input pipeline throughput (images/s, second epoch, batch 32): our TFRecord reader
(tfrecords.load_split, as train/fine_tune/evaluate use it) versus
keras.utils.image_dataset_from_directory reading the same 640x640 JPEG photos at 160x160.

The photos are Fashion-MNIST (Debian package dataset-fashion-mnist) upscaled to 640x640 RGB
JPEG (quality 90), made once into --images-dir; the preprocess step turns them into 160 px
TFRecords, once per --image-formats entry (jpeg, the default, and raw pixels). Every pipeline
is consumed by the same Python loop. Each runs one untimed epoch (tracing, filling a cache),
then the pipelines take turns for --repeats epochs and each keeps its best (and its least
CPU time per image, which other jobs on the machine disturb less). Targets: the
reader at least 5x the directory loader without caching, at least 10x with the decoded images
cached.

    .venv/bin/python -m bench.input_throughput [--count 2000] [--repeats 3]
"""
import os
import resource
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from bench.common import photos_from_arguments
from components import configs, preprocess, tfrecords

SIZE = 160
BATCH = 32


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_epoch(dataset: tf.data.Dataset) -> tuple[float, float]:
    """Images/s and this process's CPU milliseconds (all threads) per image."""
    started, cpu_started = time.perf_counter(), cpu_seconds()
    images = sum(int(images.shape[0]) for images, _ in dataset)
    return (images / (time.perf_counter() - started),
            (cpu_seconds() - cpu_started) * 1000 / images)


def load_average() -> str:
    return "load average " + ", ".join(f"{load:.2f}" for load in os.getloadavg())


def main() -> None:
    args, root = photos_from_arguments(
        __doc__, 2000, "timed epochs; the best counts",
        lambda parser: parser.add_argument("--image-formats", nargs="+",
                                           default=list(configs.IMAGE_FORMATS),
                                           choices=configs.IMAGE_FORMATS))
    print(f"start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        def from_directory() -> tf.data.Dataset:
            return keras.utils.image_dataset_from_directory(
                root, image_size=(SIZE, SIZE), batch_size=BATCH, seed=0, verbose=False)

        pipelines = {"image_dataset_from_directory": from_directory(),
                     "image_dataset_from_directory, .cache()": from_directory().cache()}
        train_mb = {}
        for image_format in args.image_formats:
            data = Path(tmp) / image_format
            # Nearly everything in the train split, which training reads.
            preprocess.run(str(root), str(data), f"{tmp}/{image_format}.parquet", SIZE, 0.98,
                           0.01, 0.01, 42, image_format=image_format)
            train_mb[image_format] = sum(os.path.getsize(f) for f in
                                         tfrecords.shard_files(data, "train")) / 2**20
            for cached, budget in (("uncached", 0), ("cached", configs.CACHE_BUDGET_MB)):
                pipelines[f"load_split, {image_format}, {cached}"] = tfrecords.load_split(
                    data, "train", BATCH, training=True, cache_budget_mb=budget, seed=0)
        for dataset in pipelines.values():
            timed_epoch(dataset)
        rate, cpu_ms = dict.fromkeys(pipelines, 0.0), dict.fromkeys(pipelines, float("inf"))
        for _ in range(args.repeats):
            for name, dataset in pipelines.items():
                images_per_second, ms_per_image = timed_epoch(dataset)
                rate[name] = max(rate[name], images_per_second)
                cpu_ms[name] = min(cpu_ms[name], ms_per_image)
    baseline = rate["image_dataset_from_directory"]
    print(f"\n{args.count} photos 640x640 JPEG -> {SIZE}x{SIZE}, batch {BATCH}, "
          f"best of {args.repeats} epochs after the first; end: {load_average()}")
    print(f"  {'':40s} {'images/s':>9s} {'ratio':>6s}  CPU ms/image (least)")
    for name, value in rate.items():
        print(f"  {name:40s} {value:9.0f} {value / baseline:5.1f}x  {cpu_ms[name]:.3f}")
    for image_format, megabytes in train_mb.items():
        print(f"  train shards, {image_format}: {megabytes:.0f} MB")


if __name__ == "__main__":
    main()
