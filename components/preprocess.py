"""Preprocess step: class folders of images -> resized, split, sharded JPEG TFRecords.

Writes `<split>-NNNNN-of-NNNNN.tfrecord` shards and `metadata.json` into the dataset folder,
and a Parquet manifest with one row per input file (written or rejected, with the reason).
"""
import hashlib
import io
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps, UnidentifiedImageError

from components import configs, tfrecords
from components.errors import TlpError


@dataclass
class SourceFile:
    path: Path
    label: str
    label_index: int
    sha256: str = ""
    status: str = "pending"  # "written" or "rejected"
    reason: str = ""
    split: str | None = None
    encoded: bytes = b""


def validate_ratios(train_ratio: float, validation_ratio: float, test_ratio: float) -> None:
    ratios = {"train_ratio": train_ratio, "validation_ratio": validation_ratio,
              "test_ratio": test_ratio}
    for name, value in ratios.items():
        if not 0 < value < 1:
            raise TlpError(f"{name}={value} must be between 0 and 1 (exclusive): "
                           "every split needs images.")
    total = sum(ratios.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise TlpError(f"split ratios sum to {total:g}, not 1: train_ratio={train_ratio}, "
                       f"validation_ratio={validation_ratio}, test_ratio={test_ratio}.")


def scan_class_folders(data_dir: str | Path) -> tuple[list[str], list[SourceFile]]:
    """Lists the image files of a folder holding one sub-folder per class.

    Raises TlpError for a missing folder, fewer than 2 classes or a class without images.
    Files with other extensions are returned as rejected, so nothing goes unaccounted for.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise TlpError(f"data folder {root} does not exist or is not a folder: pass "
                       "--data-dir with a folder holding one sub-folder per class.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise TlpError(f"data folder {root} has {len(class_dirs)} class sub-folder(s); "
                       "a classifier needs at least 2 (one sub-folder per class).")
    class_names = [d.name for d in class_dirs]
    files = []
    for index, class_dir in enumerate(class_dirs):
        entries = sorted(p for p in class_dir.rglob("*")
                         if p.is_file() and not p.name.startswith("."))
        if not any(p.suffix.lower() in configs.IMAGE_EXTENSIONS for p in entries):
            raise TlpError(f"class folder {class_dir} holds no images "
                           f"({', '.join(sorted(configs.IMAGE_EXTENSIONS))}): add images "
                           "or remove the folder.")
        for path in entries:
            source = SourceFile(path, class_dir.name, index)
            if path.suffix.lower() not in configs.IMAGE_EXTENSIONS:
                source.status, source.reason = "rejected", f"unsupported file type {path.suffix!r}"
            files.append(source)
    return class_names, files


def encode_image(data: bytes, image_size: int) -> bytes:
    """Decodes any PIL-readable image, applies EXIF orientation, converts to RGB,
    resizes to image_size x image_size and returns JPEG bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=configs.JPEG_QUALITY)
    return out.getvalue()


def load_and_encode(source: SourceFile, image_size: int) -> None:
    data = source.path.read_bytes()
    source.sha256 = hashlib.sha256(data).hexdigest()
    try:
        source.encoded = encode_image(data, image_size)
        source.status = "written"
    except (UnidentifiedImageError, OSError, ValueError) as error:
        source.status, source.reason = "rejected", f"unreadable image: {error}"


def assign_splits(files: list[SourceFile], ratios: dict[str, float], seed: int) -> None:
    """Stratified split: within each class, a seeded shuffle of the path-sorted files is cut
    by the ratios, so the same inputs and seed always give the same split."""
    rng = random.Random(seed)
    by_class: dict[int, list[SourceFile]] = {}
    for source in files:
        by_class.setdefault(source.label_index, []).append(source)
    for members in by_class.values():
        members.sort(key=lambda s: str(s.path))
        rng.shuffle(members)
        n_test = round(len(members) * ratios["test"])
        n_validation = round(len(members) * ratios["validation"])
        for position, source in enumerate(members):
            source.split = ("test" if position < n_test else
                            "validation" if position < n_test + n_validation else "train")


def write_split(files: list[SourceFile], split: str, class_names: list[str],
                output_dir: Path, image_size: int) -> list[str]:
    total_bytes = sum(len(s.encoded) for s in files)
    num_shards = max(1, math.ceil(total_bytes / configs.SHARD_TARGET_BYTES))
    shard_names = []
    for shard in range(num_shards):
        name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        examples = (tfrecords.make_example(s.encoded, s.label_index, class_names[s.label_index],
                                           s.path.name, s.sha256, image_size)
                    for s in files[shard::num_shards])
        tfrecords.write_shard(output_dir / name, examples)
        shard_names.append(name)
    return shard_names


def write_manifest(files: list[SourceFile], path: Path) -> None:
    table = pa.table({
        "source_path": [str(s.path) for s in files],
        "label": [s.label for s in files],
        "label_index": pa.array([s.label_index for s in files], pa.int32()),
        "split": [s.split for s in files],
        "sha256": [s.sha256 or None for s in files],
        "status": [s.status for s in files],
        "reason": [s.reason or None for s in files],
    })
    pq.write_table(table, path)


def run(data_dir: str, output_dir: str, manifest_path: str, image_size: int,
        train_ratio: float, validation_ratio: float, test_ratio: float, seed: int) -> dict:
    """Runs the whole preprocess step and returns the metadata it wrote."""
    validate_ratios(train_ratio, validation_ratio, test_ratio)
    class_names, files = scan_class_folders(data_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pending = [s for s in files if s.status == "pending"]
    started = time.monotonic()
    for done, source in enumerate(pending, 1):
        load_and_encode(source, image_size)
        if done % 500 == 0 or done == len(pending):
            print(f"preprocess: {done}/{len(pending)} images "
                  f"({done / (time.monotonic() - started):.0f} img/s)", flush=True)
    written = [s for s in files if s.status == "written"]
    for source in files:
        if source.status == "rejected":
            print(f"preprocess: rejected {source.path}: {source.reason}", flush=True)
    assign_splits(written, {"train": train_ratio, "validation": validation_ratio,
                            "test": test_ratio}, seed)
    rng = random.Random(seed)
    metadata = {"class_names": class_names, "num_classes": len(class_names),
                "image_size": image_size, "image_format": "jpeg", "counts": {}, "shards": {},
                "num_examples": {}, "num_rejected": len(files) - len(written)}
    for split in configs.SPLITS:
        members = [s for s in written if s.split == split]
        if not members:
            raise TlpError(f"the {split} split is empty ({len(written)} readable images): "
                           "add images or raise its ratio.")
        rng.shuffle(members)  # Mix classes within each shard.
        metadata["shards"][split] = write_split(members, split, class_names, out, image_size)
        metadata["num_examples"][split] = len(members)
        counts = Counter(s.label for s in members)
        metadata["counts"][split] = {name: counts.get(name, 0) for name in class_names}
    for source in written:
        source.encoded = b""
    (out / configs.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    write_manifest(files, Path(manifest_path))
    print(f"preprocess: wrote {metadata['num_examples']} examples of {len(class_names)} classes "
          f"to {out}; rejected {metadata['num_rejected']} file(s)", flush=True)
    return metadata
