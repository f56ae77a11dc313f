"""Shared by the benchmarks: Fashion-MNIST written as the preprocess step's TFRecords, or as
camera-sized photos."""
import argparse
import hashlib
import io
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from components import configs, fashion_mnist, images, tfrecord_writer


def write_dataset(out_dir: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                  image_size: int, names: list[str] = fashion_mnist.CLASS_NAMES) -> Path:
    """Writes {split: (28x28 images, labels)} as one shard per split (the default
    image_format) plus the metadata the input pipeline reads, as the preprocess step would;
    labels index names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"class_names": names, "num_classes": len(names), "image_size": image_size,
                "image_format": configs.IMAGE_FORMAT, "counts": {}, "shards": {},
                "num_examples": {}}
    options = images.EncodeOptions(image_size)
    for split, (pixels, labels) in splits.items():
        def examples():
            for index, (image, label) in enumerate(zip(pixels, labels)):
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                yield tfrecord_writer.frame(tfrecord_writer.serialize_example(
                    images.encode_image(png.getvalue(), options), int(label),
                    names[label], f"{split}-{index:05d}.png",
                    hashlib.sha256(png.getvalue()).hexdigest(), image_size))

        shard = f"{split}-00000-of-00001.tfrecord"
        tfrecord_writer.write_file(out_dir / shard, examples())
        metadata["shards"][split] = [shard]
        metadata["num_examples"][split] = len(labels)
        metadata["counts"][split] = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    (out_dir / configs.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    return out_dir


PHOTOS_DIR = Path.home() / ".cache" / "tlp" / "bench-fashion-mnist-640"


def _save_photo(args: tuple[np.ndarray, Path]) -> None:
    pixels, path = args
    Image.fromarray(pixels).convert("RGB").resize((640, 640), Image.Resampling.BICUBIC).save(
        path, format="JPEG", quality=90)


def make_photos(root: Path, count: int) -> Path:
    """The first `count` Fashion-MNIST training images upscaled to 640x640 RGB JPEG
    (quality 90), as root/<class>/NNNNN.jpg; made once, kept between runs."""
    if len(list(root.glob("*/*.jpg"))) == count:
        return root
    images, labels = fashion_mnist.load("train")
    images, labels = images[:count], labels[:count]
    for name in fashion_mnist.CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    jobs = [(image, root / fashion_mnist.CLASS_NAMES[label] / f"{i:05d}.jpg")
            for i, (image, label) in enumerate(zip(images, labels))]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_save_photo, jobs, chunksize=64))
    return root


def photos_from_arguments(description: str, count: int, repeats_help: str,
                          add_flags: Callable[[argparse.ArgumentParser], object] | None = None
                          ) -> tuple[argparse.Namespace, Path]:
    """The benchmarks' common flags (and add_flags' own), parsed, and their photos (made if
    need be)."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=count, help="source photos (max 60000)")
    parser.add_argument("--repeats", type=int, default=3, help=repeats_help)
    parser.add_argument("--images-dir", type=Path, default=PHOTOS_DIR)
    if add_flags:
        add_flags(parser)
    args = parser.parse_args()
    return args, make_photos(args.images_dir / str(args.count), args.count)
