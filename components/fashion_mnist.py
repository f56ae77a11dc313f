"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (MIT, Zalando): real
product photos for the bundled sample and the benchmarks, no download needed."""
import gzip
from pathlib import Path

import numpy as np

from components.errors import TlpError

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
_FILES = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the 'train' or 'test' split."""
    prefix = SOURCE_DIR / _FILES[split]
    if not SOURCE_DIR.is_dir():
        raise TlpError(f"{SOURCE_DIR} is missing: apt-get install dataset-fashion-mnist")
    return (read_idx(Path(f"{prefix}-images-idx3-ubyte.gz")),
            read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz")))


def first_per_class(labels: np.ndarray, count: int, skip: int = 0) -> np.ndarray:
    """Indices of images skip..skip+count of each class, in dataset order."""
    return np.concatenate([np.flatnonzero(labels == label)[skip:skip + count]
                           for label in range(len(CLASS_NAMES))])
