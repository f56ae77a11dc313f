"""Writes the bundled demo sample: the first N images of each class of Fashion-MNIST's
training set, as PNG files in one folder per class.

Source: the Debian package `dataset-fashion-mnist` (IDX files under
/usr/share/datasets/fashion-mnist/). Run from the repo root:
    python data/make_fashion_mnist_sample.py --per-class 100
"""
import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-sample")
    args = parser.parse_args()
    images = read_idx(SOURCE_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE_DIR / "train-labels-idx1-ubyte.gz")
    for label, name in enumerate(CLASS_NAMES):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[: args.per_class]:
            Image.fromarray(images[index]).save(folder / f"train-{index:05d}.png", optimize=True)


if __name__ == "__main__":
    main()
