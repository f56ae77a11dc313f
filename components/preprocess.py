"""Preprocess step: images of any source (components.sources) -> resized, split, sharded
JPEG TFRecords.

Writes `<split>-NNNNN-of-NNNNN.tfrecord` shards and `metadata.json` (with a summary) into the
dataset folder, and a Parquet manifest with one row per input file. Every input file ends in
exactly one place: a split (status `written`), the duplicate list (`duplicate`), or the rejected
list (`rejected`, with a reason from configs.REJECT_REASONS and a detail).
"""
import functools
import hashlib
import json
import math
import multiprocessing
import os
import random
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components import configs, images, sources, tfrecords
from components.errors import TlpError


@dataclass
class SourceFile:
    path: str  # A local path, a bucket URI or a TFDS id (tfds:NAME/SPLIT/INDEX).
    label: str
    label_index: int  # -1 when unlabelled.
    data: bytes | None = None  # The image itself when the source has read it (TFDS).
    sha256: str = ""
    status: str = "pending"  # Then one of configs.STATUSES.
    reason: str = ""
    detail: str = ""
    split: str | None = None
    offset: int = 0  # Where its encoded JPEG lies in the spool file.
    length: int = 0

    @property
    def ref(self) -> str | bytes:
        """What a worker reads the image from (sources.read)."""
        return self.path if self.data is None else self.data

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def reject(self, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = "rejected", reason, detail


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


def list_inputs(data_dir: str, tfds_data_dir: str = configs.TFDS_DATA_DIR,
                tfds_splits: str = configs.TFDS_SPLITS) -> tuple[list[str], list[SourceFile]]:
    """The class names and every input of the source (see components.sources), those the
    listing already rejects included, so nothing goes unaccounted for."""
    listing = sources.list_source(data_dir, tfds_data_dir, tfds_splits)
    index = {name: i for i, name in enumerate(listing.class_names)}
    files = []
    for entry in listing.entries:
        source = SourceFile(entry.uri, entry.label, index.get(entry.label, -1), entry.data)
        if entry.reason:
            source.reject(entry.reason, entry.detail)
        files.append(source)
    return listing.class_names, files


def resolve_workers(num_workers: int) -> int:
    """0 means one worker per CPU this process may use."""
    return num_workers or len(os.sched_getaffinity(0))


def _encoded_stream(paths: list[str], options: images.EncodeOptions, num_workers: int):
    task = functools.partial(images.hash_and_encode, options=options)
    if num_workers == 1:
        yield from map(task, paths)
        return
    # fork: workers start at once and, unlike spawn, do not re-import the main module (and
    # with it TensorFlow) each. They only run PIL, never TensorFlow, so its threads are safe.
    with multiprocessing.get_context("fork").Pool(num_workers) as pool:
        # Ordered results keep the output independent of the number of workers.
        yield from pool.imap(task, paths, chunksize=8)


def encode_all(files: list[SourceFile], options: images.EncodeOptions, num_workers: int,
               spool: BinaryIO) -> None:
    """Hashes and encodes the pending files in worker processes, appending each JPEG to the
    spool file as it arrives, so memory holds only what is in flight."""
    pending = [s for s in files if s.status == "pending"]
    results = _encoded_stream([s.ref for s in pending], options, num_workers)
    for source, result in zip(pending, tqdm(results, total=len(pending), desc="preprocess",
                                            unit="img", mininterval=2)):
        source.sha256 = result.sha256
        if result.reason:
            source.reject(result.reason, result.detail)
        else:
            source.offset, source.length = spool.tell(), len(result.jpeg)
            spool.write(result.jpeg)


def resolve_duplicates(files: list[SourceFile]) -> None:
    """Same sha256 under one label: the first path is kept, the others are duplicates.
    Same sha256 under several labels: a label conflict, all copies rejected."""
    by_hash: dict[str, list[SourceFile]] = defaultdict(list)
    for source in files:
        if source.status == "pending":
            by_hash[source.sha256].append(source)
    for copies in by_hash.values():
        copies.sort(key=lambda s: str(s.path))
        labels = sorted({s.label for s in copies})
        if len(labels) > 1:
            paths = ", ".join(str(s.path) for s in copies)
            for source in copies:
                source.reject("conflict", f"same image under labels {', '.join(labels)}: "
                                          f"{paths}")
            continue
        for source in copies[1:]:
            source.status, source.detail = "duplicate", f"same sha256 as {copies[0].path}"


def _hash_order(sha256: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def read_pinned_splits(previous_manifest: str) -> dict[str, str]:
    """sha256 -> split of the images an earlier run wrote ("" for none)."""
    if not previous_manifest:
        return {}
    rows = pq.read_table(previous_manifest, columns=["sha256", "split", "status"]).to_pylist()
    return {r["sha256"]: r["split"] for r in rows
            if r["status"] == "written" and r["split"] in configs.SPLITS}


def assign_splits(files: list[SourceFile], ratios: dict[str, float], seed: int,
                  pinned: dict[str, str] | None = None) -> None:
    """Stratified split that is stable under change.

    Guarantee: (1) an image in `pinned` (the previous manifest's sha256 -> split) keeps its
    split, so adding images never moves one already split; (2) the other images of each
    class are taken in an order given only by sha256(seed, image sha256) and each goes to the
    split furthest below its target (ratio x images so far). Starting from no pinned images
    this keeps every split of every class within one image of ratio x class size, at every
    step; starting from a pinned split that was within one, it stays within one; starting
    from one that was off (other ratios), new images close the gap as fast as possible.
    The result depends on image contents and the seed, not on file names or order.
    No rule can do both without the previous assignment: a split that never moves an image
    when others are added must be a function of that image alone, and such a split's
    per-class counts drift binomially from the ratios (a 100-image class at 10% test: +-3).
    So re-runs on the same images are identical, and re-runs on grown folders are stable
    when given the previous manifest (else images near the cut points may move).
    """
    pinned = pinned or {}
    by_class: dict[int, list[SourceFile]] = defaultdict(list)
    for source in files:
        by_class[source.label_index].append(source)
    for members in by_class.values():
        counts = Counter()
        fresh = []
        for source in members:
            source.split = pinned.get(source.sha256)
            if source.split:
                counts[source.split] += 1
            else:
                fresh.append(source)
        fresh.sort(key=lambda s: _hash_order(s.sha256, seed))
        total = len(members) - len(fresh)
        for source in fresh:
            total += 1
            source.split = max(configs.SPLITS,
                               key=lambda split: ratios[split] * total - counts[split])
            counts[source.split] += 1


def write_split(files: list[SourceFile], split: str, class_names: list[str],
                output_dir: Path, image_size: int, spool: BinaryIO) -> list[str]:
    total_bytes = sum(s.length for s in files)
    num_shards = max(1, math.ceil(total_bytes / configs.SHARD_TARGET_BYTES))

    def example(source: SourceFile):
        encoded = os.pread(spool.fileno(), source.length, source.offset)
        return tfrecords.make_example(encoded, source.label_index,
                                      class_names[source.label_index], source.name,
                                      source.sha256, image_size)

    shard_names = []
    for shard in range(num_shards):
        name = f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        tfrecords.write_shard(output_dir / name, map(example, files[shard::num_shards]))
        shard_names.append(name)
    return shard_names


def summarize(files: list[SourceFile]) -> dict[str, int]:
    """Counts that reconcile: inputs = written + duplicates + rejected."""
    statuses = Counter(s.status for s in files)
    unaccounted = set(statuses) - set(configs.STATUSES)
    if unaccounted:  # A bug, not a user error: never write a dataset that loses files.
        raise RuntimeError(f"files left with status {unaccounted}")
    reasons = Counter(s.reason for s in files if s.status == "rejected")
    splits = Counter(s.split for s in files if s.status == "written")
    return {"inputs": len(files), "written": statuses["written"],
            "duplicates": statuses["duplicate"], "rejected": statuses["rejected"],
            **{f"rejected_{r.replace(' ', '_')}": reasons[r] for r in configs.REJECT_REASONS},
            **{f"{split}_examples": splits[split] for split in configs.SPLITS}}


def check_outcome(files: list[SourceFile], class_names: list[str], summary: dict,
                  min_images_per_class: int, max_rejected_fraction: float) -> None:
    fraction = summary["rejected"] / summary["inputs"]
    if fraction > max_rejected_fraction:
        raise TlpError(f"{summary['rejected']} of {summary['inputs']} files were rejected "
                       f"({fraction:.1%}), over max_rejected_fraction="
                       f"{max_rejected_fraction}: see the manifest's reasons, fix the data "
                       "or raise the limit.")
    per_class = Counter(s.label for s in files if s.status == "written")
    short = {name: per_class[name] for name in class_names
             if per_class[name] < min_images_per_class}
    if short:
        listed = ", ".join(f"{name} ({count})" for name, count in short.items())
        raise TlpError(f"classes with fewer usable images than min_images_per_class="
                       f"{min_images_per_class}: {listed}. Add images, remove the class "
                       "folder, or lower the minimum.")
    for split in configs.SPLITS:
        if not summary[f"{split}_examples"]:
            raise TlpError(f"the {split} split is empty ({summary['written']} usable "
                           "images): add images or raise its ratio.")


def write_manifest(files: list[SourceFile], path: Path) -> None:
    table = pa.table({
        "source_path": [str(s.path) for s in files],
        "label": [s.label for s in files],
        "label_index": pa.array([s.label_index for s in files], pa.int32()),
        "split": [s.split if s.status == "written" else None for s in files],
        "sha256": [s.sha256 or None for s in files],
        "status": [s.status for s in files],
        "reason": [s.reason or None for s in files],
        "detail": [s.detail or None for s in files],
    })
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def _clear_previous_output(out: Path) -> None:
    """A re-run into the same folder (say after a kill) must not leave shards of another
    sharding behind; metadata.json goes first, so a half-cleared folder never looks done."""
    (out / configs.METADATA_FILE).unlink(missing_ok=True)
    for stale in (*out.glob("*.tfrecord"), *out.glob("*.tfrecord.partial")):
        stale.unlink()


def run(data_dir: str, output_dir: str, manifest_path: str, image_size: int,
        train_ratio: float, validation_ratio: float, test_ratio: float, seed: int, *,
        resize_mode: str = configs.RESIZE_MODE, num_workers: int = configs.NUM_WORKERS,
        min_images_per_class: int = configs.MIN_IMAGES_PER_CLASS,
        max_rejected_fraction: float = configs.MAX_REJECTED_FRACTION,
        max_image_pixels: int = configs.MAX_IMAGE_PIXELS,
        previous_manifest: str = configs.PREVIOUS_MANIFEST,
        tfds_data_dir: str = configs.TFDS_DATA_DIR,
        tfds_splits: str = configs.TFDS_SPLITS) -> dict:
    """Runs the whole preprocess step and returns the metadata it wrote (with `summary`).
    The manifest is written even when the outcome checks then fail, to show why."""
    validate_ratios(train_ratio, validation_ratio, test_ratio)
    class_names, files = list_inputs(data_dir, tfds_data_dir, tfds_splits)
    pinned = read_pinned_splits(previous_manifest)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(out)
    options = images.EncodeOptions(image_size, resize_mode, max_image_pixels)
    # An unlinked temporary file: a killed run leaves nothing behind.
    with tempfile.TemporaryFile(dir=out) as spool:
        encode_all(files, options, resolve_workers(num_workers), spool)
        spool.flush()
        resolve_duplicates(files)
        usable = [s for s in files if s.status == "pending"]
        for source in usable:
            source.status = "written"
        assign_splits(usable, {"train": train_ratio, "validation": validation_ratio,
                               "test": test_ratio}, seed, pinned)
        summary = summarize(files)
        write_manifest(files, Path(manifest_path))
        for source in files:
            if source.status == "rejected":
                print(f"preprocess: rejected {source.path}: {source.reason}: {source.detail}",
                      flush=True)
        check_outcome(files, class_names, summary, min_images_per_class,
                      max_rejected_fraction)
        metadata = {"class_names": class_names, "num_classes": len(class_names),
                    "image_size": image_size, "image_format": "jpeg", "resize_mode": resize_mode,
                    "counts": {}, "shards": {}, "num_examples": {},
                    "num_rejected": summary["rejected"], "summary": summary}
        rng = random.Random(seed)
        for split in configs.SPLITS:
            members = sorted((s for s in usable if s.split == split), key=lambda s: str(s.path))
            rng.shuffle(members)  # Mix classes within each shard.
            metadata["shards"][split] = write_split(members, split, class_names, out,
                                                    image_size, spool)
            metadata["num_examples"][split] = len(members)
            counts = Counter(s.label for s in members)
            metadata["counts"][split] = {name: counts.get(name, 0) for name in class_names}
    partial = out / (configs.METADATA_FILE + ".partial")
    partial.write_text(json.dumps(metadata, indent=2))
    partial.replace(out / configs.METADATA_FILE)  # Last: its presence marks a finished run.
    print(f"preprocess: {summary['inputs']} files: {summary['written']} written "
          f"{metadata['num_examples']}, {summary['duplicates']} duplicates, "
          f"{summary['rejected']} rejected; {len(class_names)} classes in {out}", flush=True)
    return metadata
