"""Writes the bundled demo sample: the first N images of each class of Fashion-MNIST's
training set, as PNG files in one folder per class.

Source: the Debian package `dataset-fashion-mnist` (see components/fashion_mnist.py).
Run from the repo root:
    .venv/bin/python data/make_fashion_mnist_sample.py --per-class 100
"""
import argparse
from pathlib import Path

from PIL import Image

from components import fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "fashion-mnist-sample")
    args = parser.parse_args()
    images, labels = fashion_mnist.load("train")
    for index in fashion_mnist.first_per_class(labels, args.per_class):
        folder = args.out / fashion_mnist.CLASS_NAMES[labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"train-{index:05d}.png", optimize=True)


if __name__ == "__main__":
    main()
