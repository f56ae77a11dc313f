"""Preprocess throughput (images/s): our step with 1 and 2 workers vs a naive PIL loop, with
near-duplicate hashing on (the default near_duplicate_distance); then what the hashing and
the grouping cost alone, and how many near-duplicate groups the default distance finds in the
bundled sample and in bench.accuracy's Fashion-MNIST images.

Source images are camera-sized: Fashion-MNIST (Debian package dataset-fashion-mnist) upscaled
to 640x640 RGB JPEG (quality 90), made once into --images-dir. Everything is resized to 160.
The three take turns, --repeats rounds, and each keeps its best round, so that noise from
other jobs on the machine hits them alike. Targets: 2 workers >= 1.7x 1 worker on 2 cores,
and >= 1.5x the naive loop.

    .venv/bin/python -m bench.preprocess_throughput [--count 10000] [--repeats 3]
"""
import io
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from bench.common import photos_from_arguments
from components import configs, fashion_mnist, images, near_duplicates, preprocess, \
    tfrecord_writer

SIZE = 160


def naive_loop(root: Path, out: Path) -> int:
    """What a user writes first: one process, open, convert, resize, encode, write."""
    files = sorted(root.glob("*/*.jpg"))
    with tf.io.TFRecordWriter(str(out / "naive.tfrecord")) as writer:
        for path in files:
            image = Image.open(path).convert("RGB").resize((SIZE, SIZE),
                                                          Image.Resampling.BILINEAR)
            encoded = io.BytesIO()
            image.save(encoded, format="JPEG", quality=configs.JPEG_QUALITY)
            label = fashion_mnist.CLASS_NAMES.index(path.parent.name)
            writer.write(tfrecord_writer.serialize_example(encoded.getvalue(), label,
                                                           path.parent.name, path.name, "",
                                                           SIZE))
    return len(files)


def timed(task) -> tuple[int, float]:
    started = time.perf_counter()
    count = task()
    return count, time.perf_counter() - started


def main() -> None:
    args, root = photos_from_arguments(__doc__, 10000, "rounds; the best one counts")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def ours(workers: int):
            def task() -> int:
                metadata = preprocess.run(str(root), str(tmp / f"w{workers}"),
                                          str(tmp / f"w{workers}.parquet"), SIZE, 0.8, 0.1,
                                          0.1, 42, num_workers=workers)
                return metadata["summary"]["inputs"]
            return task

        tasks = {"naive PIL loop": lambda: naive_loop(root, tmp), "tlp, 1 worker": ours(1),
                 "tlp, 2 workers": ours(2)}
        seconds = dict.fromkeys(tasks, float("inf"))
        for _ in range(args.repeats):
            for name, task in tasks.items():
                count, took = timed(task)
                seconds[name] = min(seconds[name], took)
    print(f"\n{count} images 640x640 JPEG -> {SIZE}x{SIZE} JPEG TFRecords, "
          f"best of {args.repeats}")
    rate = {name: count / took for name, took in seconds.items()}
    for name, value in rate.items():
        print(f"  {name:16s} {value:8.1f} images/s ({seconds[name]:.2f} s)")
    print(f"  2 workers / 1 worker:    {rate['tlp, 2 workers'] / rate['tlp, 1 worker']:.2f}x")
    print(f"  2 workers / naive loop:  {rate['tlp, 2 workers'] / rate['naive PIL loop']:.2f}x")
    near_duplicate_figures(root)


def hash_rate(files: list[Path]) -> float:
    """Images/s of perceptual_hashes alone, on images decoded as the workers decode them."""
    options = images.EncodeOptions(SIZE)
    decoded = [images.load_image(path.read_bytes(), options) for path in files]
    started = time.perf_counter()
    for image in decoded:
        near_duplicates.perceptual_hashes(image)
    return len(decoded) / (time.perf_counter() - started)


def groups_found(hashes: list[list[int]]) -> tuple[int, int, int, float]:
    """(groups, images in them, largest group, seconds) at the default distance."""
    started = time.perf_counter()
    roots = near_duplicates.group(hashes, configs.NEAR_DUPLICATE_DISTANCE)
    took = time.perf_counter() - started
    sizes = [size for size in Counter(roots).values() if size > 1]
    return len(sizes), sum(sizes), max(sizes, default=0), took


def accuracy_images() -> np.ndarray:
    """bench.accuracy's images: 600 train and validation images per class, the test set."""
    train, labels = fashion_mnist.load("train")
    test, _ = fashion_mnist.load("test")
    chosen = np.concatenate([fashion_mnist.first_per_class(labels, 500),
                             fashion_mnist.first_per_class(labels, 100, skip=500)])
    return np.concatenate([train[chosen], test])


def near_duplicate_figures(root: Path) -> None:
    files = sorted(root.glob("*/*.jpg"))[:2000]
    print(f"\nNear-duplicates, distance {configs.NEAR_DUPLICATE_DISTANCE}: hashing "
          f"{hash_rate(files):.0f} images/s in one process ({len(files)} photos as decoded "
          "for 160 px)")
    sample = [near_duplicates.perceptual_hashes(Image.open(path))
              for path in sorted(configs.SAMPLE_DATA_DIR.glob("*/*.png"))]
    accuracy = [near_duplicates.perceptual_hashes(Image.fromarray(pixels))
                for pixels in accuracy_images()]
    for name, hashes in (("bundled sample", sample), ("bench.accuracy's images", accuracy)):
        groups, grouped, largest, took = groups_found(hashes)
        print(f"  {name} ({len(hashes)} images): {groups} groups, {grouped} images in them, "
              f"largest {largest}; grouping {took:.2f} s ({took * 10000 / len(hashes):.2f} s "
              "per 10,000 images)")


if __name__ == "__main__":
    main()
