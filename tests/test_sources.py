"""Every kind of source: local folders, CSV and Parquet listings, TFDS datasets."""
import csv
import io
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components import preprocess, sources, storage
from components.errors import TlpError
from conftest import COLOURS, make_image, make_image_folder


def _run(source, tmp_path, **options):
    options = {"num_workers": 1, "min_images_per_class": 1, "max_rejected_fraction": 0.5,
               **options}
    metadata = preprocess.run(str(source), str(tmp_path / "out"), str(tmp_path / "m.parquet"),
                              32, 0.6, 0.2, 0.2, 1, **options)
    return metadata, pq.read_table(tmp_path / "m.parquet").to_pylist()


def _reconciles(metadata, rows) -> bool:
    summary = metadata["summary"]
    statuses = Counter(r["status"] for r in rows)
    return summary["inputs"] == len(rows) == sum(statuses.values()) and (
        summary["written"], summary["duplicates"], summary["rejected"]) == (
        statuses["written"], statuses["duplicate"], statuses["rejected"])


@pytest.mark.parametrize("source, kind", [
    ("/data/flowers", "folder"), ("gs://b/flowers", "folder"), ("s3://b/flowers/", "folder"),
    ("/data/list.csv", "listing"), ("gs://b/list.PARQUET", "listing"),
    ("tfds:mnist", "tfds"), ("tfds:cifar10_corrupted:fog_1", "tfds"),
])
def test_kind_of_each_source(source, kind):
    assert sources.kind(source) == kind


@pytest.mark.parametrize("source, message", [
    ("tfds:", "is not a TFDS id: write tfds:NAME or tfds:NAME:CONFIG"),
    ("tfds:mnist:", "is not a TFDS id"),
    ("tfds:Fashion MNIST", "is not a TFDS id"),
    ("tfds:a:b:c", "is not a TFDS id"),
    ("ftp://host/images", "unknown scheme 'ftp'; use a local path, gs:// or s3://"),
])
def test_malformed_sources_are_named(source, message):
    with pytest.raises(TlpError, match=message):
        sources.kind(source)


def test_folder_ignores_hidden_files_and_rejects_top_level_files_and_other_types(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 2, "blue": 2})
    (data / "README.md").write_text("about the data")
    (data / "red" / ".DS_Store").write_bytes(b"x")
    (data / ".cache").mkdir()
    (data / ".cache" / "x.png").write_bytes(b"x")
    (data / "blue" / "notes.txt").write_text("text")
    listing = sources.list_source(str(data))
    assert listing.class_names == ["blue", "red"]
    assert [(e.uri.removeprefix(f"{data}/"), e.label, e.reason) for e in listing.entries] == [
        ("README.md", "", "unlabelled"),
        ("blue/blue-000.png", "blue", ""), ("blue/blue-001.png", "blue", ""),
        ("blue/notes.txt", "blue", "unsupported"),
        ("red/red-000.png", "red", ""), ("red/red-001.png", "red", "")]


def _listing_folder(tmp_path):
    """Images in a folder with a listing's awkward rows pointing at them."""
    data = make_image_folder(tmp_path / "listed", {"red": 4, "green": 4})
    (data / "garbage.png").write_bytes(b"not an image")
    rows = [(f"red/red-00{i}.png", "red") for i in range(4)]  # Relative to the listing.
    rows += [(str(data / f"green/green-00{i}.png"), "green") for i in range(4)]  # Absolute.
    rows += [("red/red-000.png", "red"),  # Listed twice: a duplicate.
             ("red/gone.png", "red"), ("", "green"), ("green/green-000.png", " "),
             ("garbage.png", "green")]
    return data, rows


def _expected_outcome(rows):
    by_path = {r["source_path"].rsplit("/", 1)[-1]: (r["status"], r["reason"]) for r in rows}
    assert by_path["gone.png"] == ("rejected", "missing")
    assert by_path["garbage.png"] == ("rejected", "unreadable")
    assert Counter(r["status"] for r in rows) == {"written": 8, "duplicate": 1, "rejected": 4}
    assert Counter(r["reason"] for r in rows if r["status"] == "rejected") == {
        "missing": 2, "unlabelled": 1, "unreadable": 1}


def test_csv_listing_with_relative_absolute_and_bad_rows(tmp_path):
    data, rows = _listing_folder(tmp_path)
    with open(data / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    metadata, manifest = _run(data / "list.csv", tmp_path)
    assert metadata["class_names"] == ["green", "red"]
    _expected_outcome(manifest)
    assert _reconciles(metadata, manifest)
    assert metadata["summary"]["rejected_missing"] == 2
    assert metadata["summary"]["rejected_unlabelled"] == 1
    no_path = next(r for r in manifest if r["source_path"].endswith("#row11"))
    assert no_path["detail"] == f"row 11 of {data / 'list.csv'} has no path"
    written = {r["source_path"] for r in manifest if r["status"] == "written"}
    assert str(data / "red" / "red-001.png") in written  # Resolved against the listing.


def test_parquet_listing_is_read_like_csv(tmp_path):
    data, rows = _listing_folder(tmp_path)
    paths, labels = zip(*rows)
    pq.write_table(pa.table({"label": list(labels), "path": list(paths), "extra": [1] * 13}),
                   data / "list.parquet")
    metadata, manifest = _run(data / "list.parquet", tmp_path)
    _expected_outcome(manifest)
    assert _reconciles(metadata, manifest)


@pytest.mark.parametrize("header", [("file", "class"), ("path",)])
def test_listing_without_its_columns_names_file_columns_and_fix(tmp_path, header):
    listing = tmp_path / "list.csv"
    listing.write_text(",".join(header) + "\n" + ",".join("x" * len(header)) + "\n")
    with pytest.raises(TlpError, match=f"listing {listing} has columns {', '.join(header)}; "
                                       "it needs path and label.*Rename the columns"):
        sources.list_source(str(listing))


def test_missing_listing_is_an_error(tmp_path):
    with pytest.raises(TlpError, match="listing .*/nowhere.csv does not exist"):
        sources.list_source(str(tmp_path / "nowhere.csv"))


def _png(colour, seed) -> bytes:
    out = io.BytesIO()
    make_image(colour, (24, 20), seed).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A tiny real TFDS dataset, `tiny_colours`, prepared into a folder of its own. Its
    builder is not registered, so it is found from its files, as in a fresh process."""
    import tensorflow_datasets as tfds

    names = list(COLOURS)

    with tfds.core.registered.skip_registration():
        class TinyColours(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "picture": tfds.features.Image(shape=(None, None, 3)),
                    "colour": tfds.features.ClassLabel(names=names),
                    "note": tfds.features.Text()}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(0, 24),
                        "test": self._generate_examples(24, 30)}

            def _generate_examples(self, start, stop):
                for i in range(start, stop):
                    yield i, {"picture": _png(COLOURS[names[i % 3]], i), "colour": i % 3,
                              "note": f"example {i}"}

    data_dir = tmp_path_factory.mktemp("tfds")
    TinyColours(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


def test_tfds_dataset_with_detected_features_and_every_split(tfds_dir, tmp_path):
    metadata, manifest = _run("tfds:tiny_colours", tmp_path, tfds_data_dir=str(tfds_dir))
    assert metadata["class_names"] == list(COLOURS)  # The ClassLabel's names, in order.
    ids = sorted(r["source_path"] for r in manifest)
    assert ids == sorted([f"tfds:tiny_colours/train/{i}" for i in range(24)]
                         + [f"tfds:tiny_colours/test/{i}" for i in range(6)])
    assert all(r["status"] == "written" for r in manifest)
    assert metadata["num_examples"] == {"train": 18, "validation": 6, "test": 6}
    labels = Counter(r["label"] for r in manifest)
    assert labels == {name: 10 for name in COLOURS}


def test_tfds_splits_choose_what_is_read(tfds_dir):
    listing = sources.list_source("tfds:tiny_colours", str(tfds_dir), "test, train[:2]")
    assert [e.uri for e in listing.entries] == [
        *(f"tfds:tiny_colours/test/{i}" for i in range(6)),
        "tfds:tiny_colours/train[:2]/0", "tfds:tiny_colours/train[:2]/1"]
    assert all(e.data.startswith(b"\x89PNG") for e in listing.entries)  # Still encoded.
    for entry in listing.entries:  # Each image under its own label.
        pixels = np.asarray(Image.open(io.BytesIO(entry.data))).mean(axis=(0, 1))
        assert np.abs(pixels - COLOURS[entry.label]).max() < 20
    with pytest.raises(TlpError, match="has no split validation; its splits are"):
        sources.list_source("tfds:tiny_colours", str(tfds_dir), "validation")


def test_unknown_tfds_dataset_is_named(tmp_path):
    with pytest.raises(TlpError, match="no TFDS dataset 'no_such_set' is known or prepared in"):
        sources.list_source("tfds:no_such_set", str(tmp_path))


@pytest.fixture(params=["gcs_bucket", "s3_bucket"])
def bucket(request) -> str:
    """A fresh bucket on the local fake-gcs-server, then on moto_server."""
    return request.getfixturevalue(request.param)


def test_bucket_folder_gives_the_same_dataset_as_the_local_folder(bucket, tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 5, "green": 5})
    (data / "green" / "notes.txt").write_text("text")
    (data / "LICENSE").write_text("top-level files are in no class: rejected")
    storage.upload_dir(data, f"{bucket}/flowers")
    local, _ = _run(data, tmp_path / "local")
    # Two workers, each reading its objects itself after the parent listed the bucket.
    remote, rows = _run(f"{bucket}/flowers/", tmp_path / "remote", num_workers=2)
    assert remote == local
    assert sorted(r["source_path"] for r in rows) == sorted(
        [f"{bucket}/flowers/green/notes.txt", f"{bucket}/flowers/LICENSE"]
        + [f"{bucket}/flowers/{c}/{c}-00{i}.png" for c in ("red", "green") for i in range(5)])
    for shard in (tmp_path / "local" / "out").glob("*.tfrecord"):
        assert shard.read_bytes() == (tmp_path / "remote" / "out" / shard.name).read_bytes()


def test_listing_in_a_bucket_pointing_into_buckets(bucket, tmp_path):
    data, rows = _listing_folder(tmp_path)
    storage.upload_dir(data, f"{bucket}/listed")
    rows[4:8] = [(f"{bucket}/listed/{path[len(str(data)) + 1:]}", label)
                 for path, label in rows[4:8]]  # Absolute bucket URIs.
    out = io.StringIO()
    csv.writer(out).writerows([("path", "label"), *rows])
    storage.write_bytes(f"{bucket}/listed/list.csv", out.getvalue().encode())
    metadata, manifest = _run(f"{bucket}/listed/list.csv", tmp_path, num_workers=2)
    _expected_outcome(manifest)
    assert _reconciles(metadata, manifest)
    assert all(r["source_path"].startswith(f"{bucket}/listed/") for r in manifest)
    gone = next(r for r in manifest if r["source_path"].endswith("gone.png"))
    assert gone["detail"] == f"{bucket}/listed/red/gone.png does not exist."


def test_local_listing_pointing_into_a_bucket(gcs_bucket, tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 5, "blue": 5})
    storage.upload_dir(data, gcs_bucket)
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "".join(
        f"{gcs_bucket}/{c}/{c}-00{i}.png,{c}\n" for c in ("red", "blue") for i in range(5)))
    metadata, manifest = _run(listing, tmp_path)
    assert metadata["class_names"] == ["blue", "red"]
    assert metadata["summary"]["written"] == 10 and _reconciles(metadata, manifest)


def test_empty_bucket_prefix_is_an_error(bucket):
    with pytest.raises(TlpError, match=f"no objects under {bucket}/nothing"):
        sources.list_source(f"{bucket}/nothing")


def test_forked_workers_read_objects_intact_after_the_parent_used_the_client(bucket):
    """Forked workers sharing the parent's kept-alive connection would read each other's
    responses; storage gives each child its own clients."""
    blobs = {f"{bucket}/o/{i:02d}": bytes([i]) * (50_000 + i) for i in range(16)}
    for uri, data in blobs.items():
        storage.write_bytes(uri, data)
    for _ in range(4):
        uris = storage.list_files(f"{bucket}/o")  # The parent's client holds a connection.
        assert list(preprocess._parallel_map(sources.read, uris, 4)) == [blobs[u] for u in uris]


def test_a_listing_naming_a_fifo_or_a_folder_rejects_them_without_blocking(tmp_path):
    data = make_image_folder(tmp_path / "listed", {"red": 5, "green": 5})
    os.mkfifo(data / "pipe.png")
    (data / "folder.png").mkdir()
    rows = [(f"{c}/{c}-00{i}.png", c) for c in ("red", "green") for i in range(5)]
    rows += [("pipe.png", "red"), ("folder.png", "green")]
    (data / "list.csv").write_text("path,label\n" + "".join(f"{p},{l}\n" for p, l in rows))
    _, manifest = _run(data / "list.csv", tmp_path, max_rejected_fraction=1.0)
    rejected = {r["source_path"].rsplit("/", 1)[-1]: (r["reason"], r["detail"])
                for r in manifest if r["status"] == "rejected"}
    assert rejected == {"pipe.png": ("unreadable", "not a regular file"),
                        "folder.png": ("unreadable", "Is a directory")}


def test_a_folder_that_cannot_be_listed_is_rejected_with_its_reason(tmp_path, monkeypatch):
    """chmod 000, and (root lists it anyway) a patched os.scandir refusing it."""
    data = make_image_folder(tmp_path / "images", {"red": 2, "blue": 2})
    locked = data / "red" / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes((data / "red" / "red-000.png").read_bytes())
    locked.chmod(0)
    scandir = os.scandir

    def refuse(path):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(sources.os, "scandir", refuse)
    try:
        entries = sources.list_source(str(data)).entries
    finally:
        locked.chmod(0o755)
    assert [(e.uri, e.label, e.reason, e.detail) for e in entries if e.reason] == [
        (str(locked), "red", "unreadable", "folder cannot be listed: Permission denied")]
