"""Where the preprocess step's images come from: lists a source's images and their labels.

A source (the `data_dir` parameter) is one of:
- a folder with one sub-folder per class, local or in a bucket (`gs://bucket/prefix`,
  `s3://bucket/prefix`): `<folder>/<class>/<image>`, sub-folders of a class folder included;
  every entry `ls -R` shows is listed, hidden ones excepted: files of other types are
  rejected (`unsupported`), files directly in the folder too (`unlabelled`), and so are
  dangling links (`missing`), link loops and entries that cannot be read (`unreadable`);
- a listing: a `.csv` or `.parquet` file, local or in a bucket, with `path` and `label`
  columns; relative paths are resolved against the listing's folder; rows without a path or
  label are listed as rejected (`missing`, `unlabelled`);
- `tfds:NAME[:CONFIG]`, a TensorFlow Datasets dataset (in `tfds_data_dir` when given; prepared
  there if it is not yet); its one Image feature is the image, its one ClassLabel the label.
Images of files and bucket objects are read later, by the worker processes (`read`); those of a
TFDS dataset are read here, in one pass over its records, and held in memory.
"""
import errno
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator
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
    if isinstance(ref, bytes):
        return ref
    if not storage.is_remote(ref) and stat.S_IFMT(os.stat(ref).st_mode) not in (stat.S_IFREG,
                                                                                 stat.S_IFDIR):
        # A FIFO or device a listing names: reading it could block or never end.
        raise OSError(errno.EINVAL, "not a regular file", ref)
    return storage.read_bytes(ref)


def _bucket_folders(source: str) -> tuple[dict[str, list[Entry]], list[Entry]]:
    """class name -> its objects' entries; and the objects directly under the prefix. Hidden
    paths are left out."""
    prefix = source.rstrip("/") + "/"
    files = [uri for uri in storage.list_files(source) if uri.startswith(prefix)]
    if not files:
        raise TlpError(f"no objects under {source}: pass --data-dir with a prefix holding "
                       "one sub-folder of images per class.")
    classes: dict[str, list[Entry]] = {}
    top = []
    for uri in files:
        parts = uri[len(prefix):].split("/")
        if any(part.startswith(".") for part in parts):
            continue
        if len(parts) == 1:
            top.append(Entry(uri, ""))
        else:
            classes.setdefault(parts[0], []).append(Entry(uri, parts[0]))
    return classes, top


def _scan(folder: str, seen: set[tuple[int, int]], nested: bool = False) -> Iterator[Entry]:
    """Every entry under a local folder, hidden ones excepted, in name order, as `ls -R`
    shows them: files to read, the rest rejected. Links are followed, but a folder already
    listed (a link loop) is rejected, never listed again."""
    try:
        with os.scandir(folder) as found:
            names = sorted(entry.name for entry in found if not entry.name.startswith("."))
    except OSError as error:
        yield Entry(folder, "", reason="unreadable",
                    detail=f"folder cannot be listed: {error.strerror or error}")
        return
    if not names and nested:  # Shown by ls -R, and holding nothing to account for it.
        yield Entry(folder, "", reason="unsupported", detail="an empty folder")
    for name in names:
        path = os.path.join(folder, name)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            target = os.readlink(path) if os.path.islink(path) else path
            yield Entry(path, "", reason="missing", detail=f"link to {target}, which "
                                                              "does not exist")
            continue
        except OSError as error:  # A link loop (ELOOP), a name too long, no permission.
            yield Entry(path, "", reason="unreadable", detail=error.strerror or str(error))
            continue
        if stat.S_ISDIR(status.st_mode):
            key = (status.st_dev, status.st_ino)
            if key in seen:
                yield Entry(path, "", reason="unreadable",
                            detail="a link back to a folder already listed (a loop)")
                continue
            seen.add(key)
            yield from _scan(path, seen, nested=True)
        elif stat.S_ISREG(status.st_mode):
            yield Entry(path, "")
        else:  # Reading a FIFO would block for ever; devices and sockets are no images.
            yield Entry(path, "", reason="unsupported", detail="not a regular file")


def _local_folders(source: str) -> tuple[dict[str, list[Entry]], list[Entry]]:
    """class name -> the entries under its folder; and the entries directly in the root."""
    root = Path(source)
    if not root.is_dir():
        raise TlpError(f"data folder {root} does not exist or is not a folder: pass "
                       f"--data-dir with {FORMS}.")
    root_status = root.stat()
    seen = {(root_status.st_dev, root_status.st_ino)}
    classes: dict[str, list[Entry]] = {}
    top = []
    for entry in _scan(str(root), seen):
        relative = os.path.relpath(entry.uri, root)
        if os.sep in relative:
            classes.setdefault(relative.split(os.sep)[0], []).append(entry)
        else:
            top.append(entry)
    # Local class folders may be empty, and are then an error like any class without images.
    for name in os.listdir(root):
        if not name.startswith(".") and (root / name).is_dir():
            classes.setdefault(name, [])
    return classes, top


def _list_folder(source: str) -> Listing:
    classes, top = (_bucket_folders if storage.is_remote(source) else _local_folders)(source)
    entries = []
    for entry in top:
        if not entry.reason:
            entry.reason = "unlabelled"
            entry.detail = "directly in the data folder, in no class folder"
        entries.append(entry)
    for name, found in sorted(classes.items()):
        label = printable(name)
        if not any(Path(e.uri).suffix.lower() in configs.IMAGE_EXTENSIONS and not e.reason
                   for e in found):
            raise TlpError(f"class folder {storage.join(source, label)} holds no images "
                           f"({', '.join(sorted(configs.IMAGE_EXTENSIONS))}): add images or "
                           "remove the folder.")
        for entry in found:
            entry.label = label
            suffix = Path(entry.uri).suffix.lower()
            if not entry.reason and suffix not in configs.IMAGE_EXTENSIONS:
                entry.reason, entry.detail = "unsupported", f"file type {printable(suffix)!r}"
            entries.append(entry)
    return Listing(sorted(printable(name) for name in classes), entries)


def printable(text: str) -> str:
    """text as the manifest, logs and TFRecords can hold it: bytes of a name that are not
    UTF-8 (os.fsdecode's surrogates) and control characters (a newline) as escapes."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():  # Nearly always: skip the loop over characters.
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
