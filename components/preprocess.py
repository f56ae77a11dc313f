"""Preprocess step: images of any source (components.sources) -> resized, split, sharded
JPEG (or raw-pixel) TFRecords.

Writes `<split>-NNNNN-of-NNNNN.tfrecord` shards and `metadata.json` (with a summary) into the
dataset folder, and a Parquet manifest with one row per input file. Every input file ends in
exactly one place: a split (status `written`), the duplicate list (`duplicate`), or the rejected
list (`rejected`, with a reason from configs.REJECT_REASONS and a detail). Written images within
near_duplicate_distance bits of perceptual hash (components/near_duplicates.py) form groups,
and a group goes to one split: no test or validation image has a near-copy in train.

Two stages, so that the work can fan out over pods: `encode_part` turns a list of input files
into a part (a folder of framed TFRecord records, one spool file per chunk of files, and a table
of the files); `merge` takes one or more parts, resolves duplicates across them, assigns the
splits and writes the shards, one writer per shard, by copying the records' bytes. `run` does
both in one process pool; the pipeline's fan-out runs `encode_group` in several pods instead.
Every result depends on the files only, never on the number of workers, chunks or parts.
"""
import contextlib
import functools
import gc
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from components import configs, images, near_duplicates, sources, tfrecord_writer
from components.errors import TlpError


PART_INFO = "part.json"
PART_FILES = "files.parquet"
_PARTS_PREFIX = ".parts-"  # run()'s own part, inside the output folder while it runs.


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
    phashes: list[int] = field(default_factory=list)  # near_duplicates.perceptual_hashes
    group: str = ""  # The sha256 of its near-duplicate group's first image; "" if alone.
    spool: str = ""  # The file holding its framed TFRecord record, at offset, length bytes.
    offset: int = 0
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


def _parallel_map(task, items: list, num_workers: int):
    """task over items, in order (so results never depend on the number of workers)."""
    if num_workers == 1:
        yield from map(task, items)
        return
    # fork: workers start at once and, unlike spawn, do not re-import the main module (and
    # with it TensorFlow) each. They never run TensorFlow, so a parent's threads are harmless,
    # but a child's garbage collector could free objects inherited from a parent that has
    # (TensorFlow's finalizers then crash the child): gc.freeze() hides them from it. A worker
    # that dies anyway breaks the executor, which raises (a multiprocessing.Pool would wait).
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        gc.collect()
        gc.freeze()
        try:
            results = pool.map(task, items)  # Forks all the workers at the first task.
        finally:
            gc.unfreeze()
        try:
            yield from results
        except BrokenProcessPool as error:
            raise TlpError(f"a preprocess worker process died ({error}). Out of memory? Run "
                           "with --num-workers 1 to see the error in this process.") from error


def _encode_chunk(task: tuple[str, list[SourceFile]],
                  options: images.EncodeOptions) -> list[SourceFile]:
    """The worker task: hashes and encodes a chunk of files, appends each one's framed
    TFRecord record to the chunk's own spool file, and returns the files updated."""
    spool_path, chunk = task
    with open(spool_path, "wb") as spool:
        for source in chunk:
            result = images.hash_and_encode(source.ref, options)
            source.sha256, source.phashes = result.sha256, result.phashes
            if result.reason:
                source.reject(result.reason, result.detail)
                continue
            record = tfrecord_writer.frame(tfrecord_writer.serialize_example(
                result.encoded, source.label_index, source.label,
                sources.printable(source.name), result.sha256, options.image_size,
                options.image_format))
            source.spool, source.offset, source.length = spool_path, spool.tell(), len(record)
            spool.write(record)
    return chunk


def _chunks(items: list, num_workers: int) -> list[list]:
    """Small enough that the workers finish together and the progress bar moves, large
    enough that a chunk's spool file is worth opening."""
    size = min(64, max(1, math.ceil(len(items) / (8 * num_workers))))
    return [items[start:start + size] for start in range(0, len(items), size)]


def encode_part(files: list[SourceFile], part_dir: Path, options: images.EncodeOptions,
                num_workers: int) -> list[SourceFile]:
    """Hashes and encodes the pending files in worker processes, each chunk into its own
    spool file in part_dir, so the parent only collects small results. Returns the files, in
    order, the pending ones now with their sha256 and record (or rejected)."""
    is_pending = [s.status == "pending" for s in files]
    pending = [s for s, waiting in zip(files, is_pending) if waiting]
    tasks = [(str(part_dir / f"records-{index:05d}.bin"), chunk)
             for index, chunk in enumerate(_chunks(pending, num_workers))]
    encoded = []
    with tqdm(total=len(pending), desc="preprocess", unit="img", mininterval=2) as progress:
        for chunk in _parallel_map(functools.partial(_encode_chunk, options=options), tasks,
                                   num_workers):
            encoded.extend(chunk)
            progress.update(len(chunk))
    done = iter(encoded)  # Copies made by the workers, or (one worker) the same files.
    return [next(done) if waiting else s for s, waiting in zip(files, is_pending)]


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


def validate_near_duplicate_distance(distance: int) -> None:
    if not 0 <= distance <= configs.MAX_NEAR_DUPLICATE_DISTANCE:
        raise TlpError(f"near_duplicate_distance={distance} must be between 0 (off) and "
                       f"{configs.MAX_NEAR_DUPLICATE_DISTANCE} bits of 64.")


def group_near_duplicates(files: list[SourceFile], distance: int) -> None:
    """Sets `group` on the written images that have near-copies (near_duplicates.group):
    the sha256 of the group's first image by sha256, so groups depend on the images only,
    never on their order or the parts they were encoded in."""
    usable = sorted((s for s in files if s.status == "written"), key=lambda s: s.sha256)
    roots = near_duplicates.group([s.phashes for s in usable], distance)
    sizes = Counter(roots)
    for source, root in zip(usable, roots):
        source.group = usable[root].sha256 if sizes[root] > 1 else ""


def assign_splits(files: list[SourceFile], ratios: dict[str, float], seed: int,
                  pinned: dict[str, str] | None = None) -> None:
    """Stratified split that is stable under change, and keeps near-duplicate groups whole.

    Guarantee: (1) an image in `pinned` (the previous manifest's sha256 -> split) keeps its
    split, so adding images never moves one already split; (2) the other images are taken
    in units, a near-duplicate group (`group`) or else one image, in an order given only by
    sha256(seed, the group's or image's sha256), and each unit goes whole to the split
    furthest below its target (ratio x images so far, summed over the unit's classes); a
    unit with pinned images goes to their (most common) split, its pinned images staying
    put. Without groups and starting from no pinned images this keeps every split of every
    class within one image of ratio x class size, at every step (within a group's size with
    groups); starting from a pinned split that was within one, it stays within one; starting
    from one that was off (other ratios), new images close the gap as fast as possible.
    The result depends on image contents and the seed, not on file names or order.
    No rule can do both without the previous assignment: a split that never moves an image
    when others are added must be a function of that image alone, and such a split's
    per-class counts drift binomially from the ratios (a 100-image class at 10% test: +-3).
    So re-runs on the same images are identical, and re-runs on grown folders are stable
    when given the previous manifest (else images near the cut points may move).
    """
    pinned = pinned or {}
    units: dict[str, list[SourceFile]] = defaultdict(list)
    for source in files:
        units[source.group or source.sha256].append(source)
    counts: dict[int, Counter] = defaultdict(Counter)
    totals: Counter = Counter()

    def place(members: list[SourceFile], split: str) -> None:
        for source in members:
            source.split = split
            counts[source.label_index][split] += 1

    fresh_units = []
    for key, members in units.items():
        kept = Counter(pinned[s.sha256] for s in members if s.sha256 in pinned)
        if kept:  # Pinned images keep their split; new ones join the most common.
            totals.update(s.label_index for s in members)
            for source in members:
                place([source], pinned.get(source.sha256, kept.most_common(1)[0][0]))
        else:
            fresh_units.append((_hash_order(key, seed), members))
    for _, members in sorted(fresh_units, key=lambda unit: unit[0]):
        classes = Counter(s.label_index for s in members)
        totals.update(classes)
        place(members, max(configs.SPLITS, key=lambda split: sum(
            ratios[split] * totals[label] - counts[label][split] for label in classes)))


def plan_shards(members: list[SourceFile], split: str,
                shard_size_mb: int) -> dict[str, list[SourceFile]]:
    """Shard name -> its files: as many shards as the records' bytes need, files dealt out
    in turn so that every shard mixes the (already shuffled) classes alike."""
    total_bytes = sum(s.length for s in members)
    num_shards = max(1, math.ceil(total_bytes / (shard_size_mb * 2**20)))
    return {f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord": members[shard::num_shards]
            for shard in range(num_shards)}


def write_shard(path: Path, members: list[SourceFile]) -> None:
    """Copies the members' framed records from their spool files into one shard."""
    with contextlib.ExitStack() as stack:
        spools: dict[str, int] = {}

        def record(source: SourceFile) -> bytes:
            if source.spool not in spools:
                spools[source.spool] = stack.enter_context(open(source.spool, "rb")).fileno()
            return os.pread(spools[source.spool], source.length, source.offset)

        tfrecord_writer.write_file(path, map(record, members))


def write_shards(shards: dict[str, list[SourceFile]], output_dir: Path,
                 num_workers: int) -> None:
    """One writer per shard, num_workers at a time: copying bytes is I/O, so threads do."""
    with ThreadPoolExecutor(num_workers) as pool, tqdm(total=len(shards), desc="shards",
                                                         mininterval=2) as progress:
        for _ in pool.map(lambda item: write_shard(output_dir / item[0], item[1]),
                          shards.items()):
            progress.update()


def summarize(files: list[SourceFile]) -> dict[str, int]:
    """Counts that reconcile: inputs = written + duplicates + rejected; and the
    near-duplicate groups among the written images, and the images in them."""
    statuses = Counter(s.status for s in files)
    unaccounted = set(statuses) - set(configs.STATUSES)
    if unaccounted:  # A bug, not a user error: never write a dataset that loses files.
        raise RuntimeError(f"files left with status {unaccounted}")
    reasons = Counter(s.reason for s in files if s.status == "rejected")
    splits = Counter(s.split for s in files if s.status == "written")
    groups = Counter(s.group for s in files if s.group)
    return {"inputs": len(files), "written": statuses["written"],
            "duplicates": statuses["duplicate"], "rejected": statuses["rejected"],
            "near_duplicate_groups": len(groups),
            "near_duplicate_images": sum(groups.values()),
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


_MANIFEST_COLUMNS = {"source_path": pa.string(), "label": pa.string(),
                     "label_index": pa.int32(), "split": pa.string(), "group": pa.string(),
                     "sha256": pa.string(), "phash": pa.string(), "status": pa.string(),
                     "reason": pa.string(), "detail": pa.string()}
# A part's table also holds each file's path as bytes (a name need not be UTF-8), all its
# perceptual hashes, and where its record lies, relative to the part folder.
_PART_COLUMNS = {**_MANIFEST_COLUMNS, "path_bytes": pa.binary(),
                 "phashes": pa.list_(pa.uint64()), "spool": pa.string(),
                 "offset": pa.int64(), "length": pa.int64()}


def _write_table(files: list[SourceFile], path: Path, columns: dict) -> None:
    rows = [{"source_path": sources.printable(s.path), "label": s.label,
             "label_index": s.label_index,
             "split": s.split if s.status == "written" else None, "group": s.group or None,
             "sha256": s.sha256 or None,
             "phash": near_duplicates.to_hex(s.phashes[0]) if s.phashes else None,
             "status": s.status, "reason": s.reason or None,
             "detail": sources.printable(s.detail) or None,
             "path_bytes": os.fsencode(s.path), "phashes": s.phashes,
             "spool": os.path.basename(s.spool), "offset": s.offset, "length": s.length}
            for s in files]
    table = pa.Table.from_pylist(rows, schema=pa.schema(columns))
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(path)


def write_manifest(files: list[SourceFile], path: Path) -> None:
    _write_table(files, path, _MANIFEST_COLUMNS)


def save_part(part_dir: Path, info: dict, files: list[SourceFile]) -> None:
    """A part: its files' table and info (class names, encoding options, group), beside
    the spool files; the info goes last, so a part with one is complete."""
    _write_table(files, part_dir / PART_FILES, _PART_COLUMNS)
    (part_dir / PART_INFO).write_text(json.dumps(info, indent=2))


def load_part(part_dir: Path) -> tuple[dict, list[SourceFile]]:
    info = json.loads((part_dir / PART_INFO).read_text())
    files = []
    for row in pq.read_table(part_dir / PART_FILES).to_pylist():
        source = SourceFile(os.fsdecode(row["path_bytes"]), row["label"], row["label_index"],
                            sha256=row["sha256"] or "", status=row["status"],
                            reason=row["reason"] or "", detail=row["detail"] or "",
                            phashes=row["phashes"], offset=row["offset"],
                            length=row["length"])
        source.spool = str(part_dir / row["spool"]) if row["spool"] else ""
        files.append(source)
    return info, files


def _clear_previous_output(out: Path) -> None:
    """A re-run into the same folder (say after a kill) must not leave shards of another
    sharding behind; metadata.json goes first, so a half-cleared folder never looks done."""
    (out / configs.METADATA_FILE).unlink(missing_ok=True)
    for stale in (*out.glob("*.tfrecord"), *out.glob("*.tfrecord.partial")):
        stale.unlink()


def save_listing(data_dir: str, listing_dir: Path) -> None:
    """The fan-out's first step: lists the inputs once, as a part without records, for the
    groups to share."""
    class_names, files = list_inputs(data_dir)
    if any(source.data is not None for source in files):
        raise TlpError(f"{data_dir}: a TFDS source cannot fan out over pods (its images are "
                       "read in the listing step): set preprocess_parallelism=1.")
    listing_dir.mkdir(parents=True, exist_ok=True)
    save_part(listing_dir, {"class_names": class_names}, files)


def _part_info(class_names: list[str], options: images.EncodeOptions, group: int,
               groups: int) -> dict:
    return {"class_names": class_names, "image_size": options.image_size,
            "resize_mode": options.resize_mode, "max_pixels": options.max_pixels,
            "image_format": options.image_format,
            "group": group, "groups": groups}


def encode_group(listing_dir: Path, group: int, groups: int, part_dir: Path,
                 options: images.EncodeOptions, num_workers: int) -> None:
    """One pod of the fan-out: encodes group `group` of `groups` (a contiguous slice of the
    listing) into part_dir."""
    info, files = load_part(listing_dir)
    start, end = len(files) * group // groups, len(files) * (group + 1) // groups
    part_dir.mkdir(parents=True, exist_ok=True)
    files = encode_part(files[start:end], part_dir, options, resolve_workers(num_workers))
    save_part(part_dir, _part_info(info["class_names"], options, group, groups), files)


def _read_parts(part_dirs: list[Path]) -> tuple[dict, list[SourceFile]]:
    """The parts' files in group order; checks that they are the groups of one listing,
    encoded alike."""
    loaded = sorted((load_part(Path(d)) for d in part_dirs), key=lambda p: p[0]["group"])
    infos = [info for info, _ in loaded]
    groups = infos[0]["groups"]
    if [info["group"] for info in infos] != list(range(groups)) or any(
            {**info, "group": 0} != {**infos[0], "group": 0} for info in infos):
        raise RuntimeError(f"parts do not make up one listing's {groups} groups, encoded "
                           f"alike: {infos}")  # A bug in the DAG, not a user error.
    return infos[0], [source for _, files in loaded for source in files]


def merge(part_dirs: list[Path], output_dir: str, manifest_path: str, train_ratio: float,
          validation_ratio: float, test_ratio: float, seed: int, *,
          shard_size_mb: int = configs.SHARD_SIZE_MB, num_workers: int = configs.NUM_WORKERS,
          min_images_per_class: int = configs.MIN_IMAGES_PER_CLASS,
          max_rejected_fraction: float = configs.MAX_REJECTED_FRACTION,
          previous_manifest: str = configs.PREVIOUS_MANIFEST,
          near_duplicate_distance: int = configs.NEAR_DUPLICATE_DISTANCE) -> dict:
    """Parts -> the dataset: duplicates resolved and near-duplicates grouped across all
    parts, splits assigned, the manifest, the shards and metadata.json written; returns the
    metadata (with `summary`). The manifest is written even when the outcome checks then
    fail, to show why."""
    info, files = _read_parts(part_dirs)
    class_names = info["class_names"]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(out)
    resolve_duplicates(files)
    usable = [s for s in files if s.status == "pending"]
    for source in usable:
        source.status = "written"
    group_near_duplicates(usable, near_duplicate_distance)
    assign_splits(usable, {"train": train_ratio, "validation": validation_ratio,
                           "test": test_ratio}, seed, read_pinned_splits(previous_manifest))
    summary = summarize(files)
    write_manifest(files, Path(manifest_path))
    for source in files:
        if source.status == "rejected":
            print(f"preprocess: rejected {sources.printable(source.path)}: {source.reason}: "
                  f"{sources.printable(source.detail)}", flush=True)
    check_outcome(files, class_names, summary, min_images_per_class, max_rejected_fraction)
    metadata = {"class_names": class_names, "num_classes": len(class_names),
                "image_size": info["image_size"], "image_format": info["image_format"],
                "resize_mode": info["resize_mode"], "counts": {}, "shards": {},
                "num_examples": {}, "num_rejected": summary["rejected"], "summary": summary}
    shards = {}
    rng = random.Random(seed)
    for split in configs.SPLITS:
        members = sorted((s for s in usable if s.split == split), key=lambda s: s.path)
        rng.shuffle(members)  # Mix classes within each shard.
        split_shards = plan_shards(members, split, shard_size_mb)
        shards.update(split_shards)
        metadata["shards"][split] = list(split_shards)
        metadata["num_examples"][split] = len(members)
        counts = Counter(s.label for s in members)
        metadata["counts"][split] = {name: counts.get(name, 0) for name in class_names}
    write_shards(shards, out, resolve_workers(num_workers))
    partial = out / (configs.METADATA_FILE + ".partial")
    partial.write_text(json.dumps(metadata, indent=2))
    partial.replace(out / configs.METADATA_FILE)  # Last: its presence marks a finished run.
    print(f"preprocess: {summary['inputs']} files: {summary['written']} written "
          f"{metadata['num_examples']}, {summary['duplicates']} duplicates, "
          f"{summary['rejected']} rejected; {summary['near_duplicate_images']} images in "
          f"{summary['near_duplicate_groups']} near-duplicate groups (each in one split; "
          f"largest {max(Counter(s.group for s in usable if s.group).values(), default=0)}); "
          f"{len(class_names)} classes in {out}", flush=True)
    return metadata


def artifact_metadata(metadata: dict) -> dict:
    """What the dataset artifact shows in the KFP UI."""
    return {key: metadata[key] for key in
            ("class_names", "image_size", "num_examples", "num_rejected")}


def run(data_dir: str, output_dir: str, manifest_path: str, image_size: int,
        train_ratio: float, validation_ratio: float, test_ratio: float, seed: int, *,
        resize_mode: str = configs.RESIZE_MODE, num_workers: int = configs.NUM_WORKERS,
        min_images_per_class: int = configs.MIN_IMAGES_PER_CLASS,
        max_rejected_fraction: float = configs.MAX_REJECTED_FRACTION,
        max_image_pixels: int = configs.MAX_IMAGE_PIXELS,
        previous_manifest: str = configs.PREVIOUS_MANIFEST,
        shard_size_mb: int = configs.SHARD_SIZE_MB,
        tfds_data_dir: str = configs.TFDS_DATA_DIR,
        tfds_splits: str = configs.TFDS_SPLITS,
        image_format: str = configs.IMAGE_FORMAT,
        near_duplicate_distance: int = configs.NEAR_DUPLICATE_DISTANCE) -> dict:
    """The whole preprocess step in one process pool: one group, then the merge."""
    validate_ratios(train_ratio, validation_ratio, test_ratio)
    validate_near_duplicate_distance(near_duplicate_distance)
    class_names, files = list_inputs(data_dir, tfds_data_dir, tfds_splits)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_output(out)
    for stale in out.glob(_PARTS_PREFIX + "*"):  # What a killed run left.
        shutil.rmtree(stale)
    options = images.EncodeOptions(image_size, resize_mode, max_image_pixels, image_format)
    # In the output folder, whose disk is sized for the dataset; removed when done.
    with tempfile.TemporaryDirectory(prefix=_PARTS_PREFIX, dir=out) as part:
        files = encode_part(files, Path(part), options, resolve_workers(num_workers))
        save_part(Path(part), _part_info(class_names, options, 0, 1), files)
        return merge([Path(part)], output_dir, manifest_path, train_ratio, validation_ratio,
                     test_ratio, seed, shard_size_mb=shard_size_mb, num_workers=num_workers,
                     min_images_per_class=min_images_per_class,
                     max_rejected_fraction=max_rejected_fraction,
                     previous_manifest=previous_manifest,
                     near_duplicate_distance=near_duplicate_distance)
