"""Where the preprocess step's images come from: lists a source's images and their labels.

A source (the `data_dir` parameter) is one of:
- a folder with one sub-folder per class, local or in a bucket (`gs://bucket/prefix`,
  `s3://bucket/prefix`): `<folder>/<class>/<image>`; hidden files and files directly in the
  folder are ignored, files of other types are listed as rejected (`unsupported`);
- a listing: a `.csv` or `.parquet` file, local or in a bucket, with `path` and `label`
  columns; relative paths are resolved against the listing's folder; rows without a path or
  label are listed as rejected (`missing`, `unlabelled`);
- `tfds:NAME[:CONFIG]`, a TensorFlow Datasets dataset (in `tfds_data_dir` when given; prepared
  there if it is not yet); its one Image feature is the image, its one ClassLabel the label.
Images of files and bucket objects are read later, by the worker processes (`read`); those of a
TFDS dataset are read here, in one pass over its records, and held in memory.
"""
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from components import configs, storage
from components.errors import TlpError

TFDS_PREFIX = "tfds:"
_TFDS = re.compile(r"tfds:([a-z][a-z0-9_]*)(?::([A-Za-z0-9_.+-]+))?")
LISTING_SUFFIXES = (".csv", ".parquet")
SCHEMES = ("gs://", "s3://")
FORMS = ("a folder (local, gs:// or s3://) with one sub-folder of images per class, a .csv or "
         ".parquet listing of path,label rows, or tfds:NAME[:CONFIG]")


@dataclass
class Entry:
    """One input: uri is what the manifest shows (a path, a bucket URI or a TFDS id such as
    tfds:mnist/train/123); data holds its bytes when the source has read them already."""
    uri: str
    label: str
    data: bytes | None = None
    reason: str = ""  # Set when the entry is rejected while listing.
    detail: str = ""

    @property
    def ref(self) -> str | bytes:
        """What a worker reads the image from (see `read`)."""
        return self.uri if self.data is None else self.data


@dataclass
class Listing:
    class_names: list[str]
    entries: list[Entry]


def kind(source: str) -> str:
    """`folder`, `listing` or `tfds`. Raises TlpError for a malformed tfds: id or a scheme
    other than gs:// and s3://."""
    if source.startswith(TFDS_PREFIX):
        if not _TFDS.fullmatch(source):
            raise TlpError(f"data_dir={source!r} is not a TFDS id: write tfds:NAME or "
                           "tfds:NAME:CONFIG, e.g. tfds:mnist or tfds:cifar10_corrupted:fog_1.")
        return "tfds"
    if "://" in source and not source.startswith(SCHEMES):
        raise TlpError(f"data_dir={source!r}: unknown scheme {source.split('://')[0]!r}; use "
                       f"a local path, gs:// or s3:// ({FORMS}).")
    return "listing" if source.lower().endswith(LISTING_SUFFIXES) else "folder"


def list_source(source: str, tfds_data_dir: str = configs.TFDS_DATA_DIR,
                tfds_splits: str = configs.TFDS_SPLITS) -> Listing:
    """Lists every input of a source (see the module docstring). Raises TlpError when the
    source is missing, malformed or has fewer than 2 classes."""
    source_kind = kind(source)
    if source_kind == "tfds":
        listing = _list_tfds(source, tfds_data_dir, tfds_splits)
    elif source_kind == "listing":
        listing = _list_table(source)
    else:
        listing = _list_folder(source)
    if len(listing.class_names) < 2:
        raise TlpError(f"{source} has {len(listing.class_names)} class(es) "
                       f"({', '.join(listing.class_names) or 'none'}); a classifier needs at "
                       "least 2.")
    return listing


def read(ref: str | bytes) -> bytes:
    """An image's bytes, in a worker process: a local file or bucket object, read through
    storage; bytes pass through. Raises FileNotFoundError (storage's MissingError) for a file
    that does not exist (a rejection), TlpError when the store cannot be used at all (a
    missing bucket, denied access: a failed run)."""
    return ref if isinstance(ref, bytes) else storage.read_bytes(ref)


def _class_folders(source: str) -> dict[str, list[str]]:
    """class name -> its files (sorted URIs); hidden paths and top-level files left out."""
    if storage.is_remote(source):
        prefix = source.rstrip("/") + "/"
        files = [uri for uri in storage.list_files(source) if uri.startswith(prefix)]
        if not files:
            raise TlpError(f"no objects under {source}: pass --data-dir with a prefix holding "
                           "one sub-folder of images per class.")
        relative = [(uri, uri[len(prefix):]) for uri in files]
        classes = {}
    else:
        root = Path(source)
        if not root.is_dir():
            raise TlpError(f"data folder {root} does not exist or is not a folder: pass "
                           f"--data-dir with {FORMS}.")
        relative = [(str(p), p.relative_to(root).as_posix())
                    for p in sorted(root.rglob("*")) if p.is_file()]
        # Local class folders may be empty, and are then an error like any class without images.
        classes = {d.name: [] for d in root.iterdir() if d.is_dir()
                   and not d.name.startswith(".")}
    for uri, path in relative:
        parts = path.split("/")
        if len(parts) > 1 and not any(part.startswith(".") for part in parts):
            classes.setdefault(parts[0], []).append(uri)
    return dict(sorted(classes.items()))


def _list_folder(source: str) -> Listing:
    entries = []
    for name, uris in _class_folders(source).items():
        suffixes = [Path(uri).suffix.lower() for uri in uris]
        if not any(suffix in configs.IMAGE_EXTENSIONS for suffix in suffixes):
            raise TlpError(f"class folder {storage.join(source, name)} holds no images "
                           f"({', '.join(sorted(configs.IMAGE_EXTENSIONS))}): add images or "
                           "remove the folder.")
        for uri, suffix in zip(uris, suffixes):
            entry = Entry(uri, name)
            if suffix not in configs.IMAGE_EXTENSIONS:
                entry.reason, entry.detail = "unsupported", f"file type {suffix!r}"
            entries.append(entry)
    return Listing(sorted({e.label for e in entries}), entries)


def _read_table(source: str) -> pa.Table:
    if not storage.exists(source):
        raise TlpError(f"listing {source} does not exist: pass --data-dir with {FORMS}.")
    data = storage.read_bytes(source)
    try:
        if source.lower().endswith(".csv"):
            strings = {column: pa.string() for column in configs.LISTING_COLUMNS}
            return pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(
                column_types=strings))
        return pq.read_table(io.BytesIO(data))
    except pa.ArrowException as error:
        raise TlpError(f"listing {source} cannot be read: {error}") from error


def _list_table(source: str) -> Listing:
    table = _read_table(source)
    found = table.column_names
    if not set(configs.LISTING_COLUMNS) <= set(found):
        raise TlpError(f"listing {source} has columns {', '.join(found) or '(none)'}; it needs "
                       f"{' and '.join(configs.LISTING_COLUMNS)}: one row per image, its path "
                       "(absolute, relative to the listing's folder, or gs:// / s3://) and its "
                       "class name. Rename the columns or add a header row.")
    folder = source.rsplit("/", 1)[0] if storage.is_remote(source) else \
        str(Path(source).resolve().parent)
    columns = [table.column(c).cast(pa.string()).to_pylist() for c in configs.LISTING_COLUMNS]
    entries = [_row_entry(source, folder, row, (path or "").strip(), (label or "").strip())
               for row, (path, label) in enumerate(zip(*columns), start=1)]
    return Listing(sorted({e.label for e in entries if not e.reason}), entries)


def _row_entry(source: str, folder: str, row: int, path: str, label: str) -> Entry:
    if not path:
        return Entry(f"{source}#row{row}", label, reason="missing",
                     detail=f"row {row} of {source} has no path")
    if not (storage.is_remote(path) or Path(path).is_absolute()):
        path = storage.join(folder, path)
    if not label:
        return Entry(path, "", reason="unlabelled", detail=f"row {row} of {source} has no label")
    return Entry(path, label)


def _tfds_builder(source: str, data_dir: str):
    import tensorflow_datasets as tfds

    name, config = _TFDS.fullmatch(source).groups()
    where = f" in {data_dir}" if data_dir else ""
    try:
        builder = tfds.builder(name, config=config, data_dir=data_dir or None)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise TlpError(f"{source}: no TFDS dataset {name!r} is known or prepared{where}: check "
                       "the name, or pass tfds_data_dir with the folder it was prepared in.") \
            from error
    if not builder.is_prepared():
        try:  # What tfds.load does; needs internet unless the source files are at hand.
            builder.download_and_prepare()
        except Exception as error:  # noqa: BLE001 - tfds raises many kinds.
            raise TlpError(f"{source} is not prepared{where} and preparing it failed ({error}): "
                           f"run `tfds build {name}` where it can download, and pass "
                           "tfds_data_dir with the folder it wrote.") from error
    return builder


def _only_feature(source: str, features, feature_type) -> str:
    keys = [key for key, feature in features.items() if isinstance(feature, feature_type)]
    if len(keys) != 1:
        raise TlpError(f"{source} has {len(keys)} {feature_type.__name__} features "
                       f"({', '.join(keys) or 'none'}) among {', '.join(features)}; "
                       "tlp needs exactly one image and one class label.")
    return keys[0]


def _tfds_splits(source: str, builder, tfds_splits: str) -> list[str]:
    available = list(builder.info.splits)
    splits = [s.strip() for s in tfds_splits.split(",") if s.strip()] or available
    unknown = [s for s in splits if s.split("[")[0] not in available]
    if unknown:
        raise TlpError(f"tfds_splits: {source} has no split {', '.join(unknown)}; its splits "
                       f"are {', '.join(available)}.")
    return splits


def _list_tfds(source: str, data_dir: str, tfds_splits: str) -> Listing:
    import tensorflow_datasets as tfds

    builder = _tfds_builder(source, data_dir)
    features = builder.info.features
    image_key = _only_feature(source, features, tfds.features.Image)
    label_key = _only_feature(source, features, tfds.features.ClassLabel)
    class_names = list(features[label_key].names)
    entries = []
    for split in _tfds_splits(source, builder, tfds_splits):
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
        entries.extend(_tfds_entries(f"{source}/{split}", tfds.as_numpy(dataset), image_key,
                                     label_key, class_names))
    return Listing(class_names, entries)


def _tfds_entries(prefix: str, examples: Iterable[dict], image_key: str, label_key: str,
                  class_names: list[str]) -> list[Entry]:
    entries = []
    for index, example in enumerate(examples):
        label = int(example[label_key])
        entry = Entry(f"{prefix}/{index}", class_names[label] if label >= 0 else "",
                      data=bytes(example[image_key]))
        if label < 0:  # TFDS's mark for an unlabelled example.
            entry.reason, entry.detail = "unlabelled", f"{label_key} is {label}"
        entries.append(entry)
    return entries
