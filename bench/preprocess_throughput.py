"""Preprocess throughput (images/s): our step with 1 and 2 workers vs a naive PIL loop.

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
from pathlib import Path

import tensorflow as tf
from PIL import Image

from bench.common import photos_from_arguments
from components import configs, fashion_mnist, preprocess, tfrecord_writer

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


if __name__ == "__main__":
    main()
