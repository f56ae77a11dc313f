import io
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components import preprocess, sources, storage
from components.errors import TlpError
from conftest import make_image, make_image_folder


def _run(data, out_dir, **options):
    """One in-process worker unless a test asks for more: spawning costs a second."""
    options = {"num_workers": 1, "min_images_per_class": 1, **options}
    ratios = options.pop("ratios", (0.6, 0.2, 0.2))
    metadata = preprocess.run(str(data), str(out_dir / "out"), str(out_dir / "m.parquet"), 32,
                              *ratios, options.pop("seed", 1), **options)
    return metadata, pq.read_table(out_dir / "m.parquet").to_pylist()


def test_split_is_deterministic_and_stratified(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 20, "green": 10, "blue": 30})
    runs = []
    for name in ("a", "b"):
        preprocess.run(str(data), str(tmp_path / name), str(tmp_path / f"{name}.parquet"), 32,
                       0.6, 0.2, 0.2, seed=7)
        runs.append(pq.read_table(tmp_path / f"{name}.parquet").to_pylist())
    assert runs[0] == runs[1]
    counts = Counter((row["label"], row["split"]) for row in runs[0])
    for label, total in {"red": 20, "green": 10, "blue": 30}.items():
        assert counts[label, "test"] == round(total * 0.2)
        assert counts[label, "validation"] == round(total * 0.2)
        assert counts[label, "train"] == total - 2 * round(total * 0.2)


def test_other_seed_gives_other_split(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 20, "green": 20})
    splits = []
    for seed in (1, 2):
        manifest = tmp_path / f"{seed}.parquet"
        preprocess.run(str(data), str(tmp_path / str(seed)), str(manifest), 32, 0.5, 0.25, 0.25,
                       seed=seed)
        splits.append([row["split"] for row in pq.read_table(manifest).to_pylist()])
    assert splits[0] != splits[1]


def test_outputs_shards_metadata_and_manifest(tmp_path, image_folder):
    (image_folder / "red" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    (image_folder / "green" / "notes.txt").write_text("not an image")
    metadata = preprocess.run(str(image_folder), str(tmp_path / "out"),
                              str(tmp_path / "m.parquet"), 48, 0.6, 0.2, 0.2, seed=1)
    assert metadata["class_names"] == ["blue", "green", "red"]
    assert metadata["image_size"] == 48
    assert metadata["num_examples"] == {"train": 18, "validation": 6, "test": 6}
    assert metadata["counts"]["test"] == {"blue": 2, "green": 2, "red": 2}
    assert metadata["num_rejected"] == 2
    for split in ("train", "validation", "test"):
        assert (tmp_path / "out" / f"{split}-00000-of-00001.tfrecord").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metadata.json", "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
        "validation-00000-of-00001.tfrecord"]  # No partial shard, no spool left.
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert len(rows) == 32  # Every input file, written or not.
    rejected = {r["source_path"].rsplit("/", 1)[1]: r for r in rows if r["status"] == "rejected"}
    assert rejected.keys() == {"corrupt.png", "notes.txt"}
    assert rejected["corrupt.png"]["reason"] == "unreadable"
    assert rejected["notes.txt"]["reason"] == "unsupported"
    assert rejected["notes.txt"]["detail"] == "file type '.txt'"
    assert all(r["split"] is None for r in rejected.values())
    assert all(len(r["sha256"]) == 64 for r in rows if r["status"] == "written")


def _ratio_bounds_hold(rows, ratios):
    per_class = Counter(r["label"] for r in rows if r["status"] == "written")
    splits = Counter((r["label"], r["split"]) for r in rows if r["status"] == "written")
    return all(abs(splits[label, split] - ratio * total) <= 1
               for label, total in per_class.items() for split, ratio in ratios.items())


def test_split_is_stratified_within_one_image_per_class(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 7, "green": 13, "blue": 31})
    _, rows = _run(data, tmp_path, ratios=(0.7, 0.2, 0.1))
    assert _ratio_bounds_hold(rows, {"train": 0.7, "validation": 0.2, "test": 0.1})


def test_added_images_never_move_existing_ones(tmp_path):
    ratios = {"train": 0.7, "validation": 0.2, "test": 0.1}
    data = make_image_folder(tmp_path / "images", {"red": 20, "green": 11, "blue": 5})
    _, before = _run(data, tmp_path / "a", ratios=ratios.values())
    make_image_folder(data, {"red": 37, "green": 30, "blue": 23})  # Same first images, more.
    _, after = _run(data, tmp_path / "b", ratios=ratios.values(),
                    previous_manifest=str(tmp_path / "a" / "m.parquet"))
    old = {r["sha256"]: r["split"] for r in before}
    moved = [r for r in after if r["sha256"] in old and r["split"] != old[r["sha256"]]]
    assert len(after) == 90 and len(old) == 36 and not moved
    assert _ratio_bounds_hold(after, ratios)


def test_split_ignores_file_names(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 10, "green": 10})
    _, before = _run(data, tmp_path / "a")
    for path in sorted(data.rglob("*.png")):
        path.rename(path.with_name(path.stem[::-1] + ".png"))
    _, after = _run(data, tmp_path / "b")
    assert sorted((r["sha256"], r["split"]) for r in before) == sorted(
        (r["sha256"], r["split"]) for r in after)


def test_duplicates_written_once_and_label_conflicts_kept_out(tmp_path, image_folder):
    shutil.copy(image_folder / "red" / "red-000.png", image_folder / "red" / "zz-copy.png")
    shutil.copy(image_folder / "green" / "green-001.png", image_folder / "blue" / "oops.png")
    metadata, rows = _run(image_folder, tmp_path)
    by_name = {r["source_path"].rsplit("/", 1)[1]: r for r in rows}
    assert by_name["zz-copy.png"]["status"] == "duplicate"
    assert by_name["zz-copy.png"]["detail"].endswith("red-000.png")
    assert by_name["red-000.png"]["status"] == "written"
    for name in ("oops.png", "green-001.png"):
        assert (by_name[name]["status"], by_name[name]["reason"]) == ("rejected", "conflict")
        assert "blue, green" in by_name[name]["detail"]
    assert sum(metadata["num_examples"].values()) == 29
    assert metadata["summary"]["duplicates"] == 1 and metadata["summary"]["rejected"] == 2


def _jpeg_bytes(size=(40, 30)):
    out = io.BytesIO()
    make_image((200, 30, 30), size, 0).save(out, format="JPEG")
    return out.getvalue()


def test_every_rejection_reason_and_the_summary_reconciles(tmp_path, image_folder):
    red = image_folder / "red"
    (red / "garbage.jpg").write_bytes(b"not an image")
    (red / "cut.jpg").write_bytes(_jpeg_bytes()[:400])
    (red / "notes.txt").write_text("text")
    make_image((200, 30, 30), (120, 100), 5).save(red / "huge.png")
    shutil.copy(red / "red-002.png", image_folder / "green" / "mislabelled.png")
    shutil.copy(red / "red-003.png", red / "again.png")
    metadata, rows = _run(image_folder, tmp_path, max_image_pixels=10_000,
                          max_rejected_fraction=0.5)
    reasons = {r["source_path"].rsplit("/", 1)[1]: r["reason"] for r in rows
               if r["status"] == "rejected"}
    assert reasons == {"garbage.jpg": "unreadable", "cut.jpg": "truncated",
                       "notes.txt": "unsupported", "huge.png": "too large",
                       "mislabelled.png": "conflict", "red-002.png": "conflict"}
    summary = metadata["summary"]
    statuses = Counter(r["status"] for r in rows)
    assert summary["inputs"] == len(rows) == 36
    assert summary["inputs"] == summary["written"] + summary["duplicates"] + summary["rejected"]
    assert (summary["written"], summary["duplicates"], summary["rejected"]) == (
        statuses["written"], statuses["duplicate"], statuses["rejected"]) == (29, 1, 6)
    assert summary["rejected_conflict"] == 2 and summary["rejected_too_large"] == 1
    assert summary["written"] == sum(metadata["num_examples"].values())


def test_too_many_rejections_fail_after_writing_the_manifest(tmp_path, image_folder):
    for i in range(4):
        (image_folder / "red" / f"bad-{i}.jpg").write_bytes(b"junk")
    with pytest.raises(TlpError, match="4 of 34 files were rejected.*max_rejected_fraction=0.1"):
        _run(image_folder, tmp_path, max_rejected_fraction=0.1)
    assert len(pq.read_table(tmp_path / "m.parquet")) == 34
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_class_under_the_minimum_fails(tmp_path, image_folder):
    for path in list((image_folder / "blue").iterdir())[3:]:
        path.write_bytes(b"junk")
    with pytest.raises(TlpError, match=r"min_images_per_class=4: blue \(3\)"):
        _run(image_folder, tmp_path, min_images_per_class=4, max_rejected_fraction=1)


def test_workers_produce_identical_output_and_reruns_are_idempotent(tmp_path, image_folder):
    _run(image_folder, tmp_path / "one", shard_size_mb=0.005)  # Several shards per split.
    out = tmp_path / "two" / "out"
    out.mkdir(parents=True)
    # What a killed run with another sharding leaves behind.
    (out / "train-00000-of-00002.tfrecord").write_bytes(b"old")
    (out / "train-00001-of-00002.tfrecord.partial").write_bytes(b"half")
    _run(image_folder, tmp_path / "two", num_workers=2, shard_size_mb=0.005)
    assert len(list(out.glob("train-*"))) > 1
    names = sorted(p.name for p in (tmp_path / "one" / "out").iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (tmp_path / "one" / "out" / name).read_bytes() == (out / name).read_bytes()


def _die_on_three(item: int) -> int:
    if item == 3:
        os._exit(1)  # What the kernel's out-of-memory killer leaves: no exception, no result.
    return item


def test_a_worker_that_dies_fails_the_step_instead_of_hanging():
    assert list(preprocess._parallel_map(_die_on_three, [0, 1, 2], 2)) == [0, 1, 2]
    with pytest.raises(TlpError, match="worker process died.*--num-workers 1"):
        list(preprocess._parallel_map(_die_on_three, list(range(6)), 2))


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".gif", ".webp"])
def test_reads_every_supported_format(tmp_path, suffix):
    data = make_image_folder(tmp_path / "images", {"red": 5, "blue": 5}, suffix=suffix)
    metadata = preprocess.run(str(data), str(tmp_path / "out"), str(tmp_path / "m.parquet"),
                              32, 0.6, 0.2, 0.2, seed=1)
    assert sum(metadata["num_examples"].values()) == 10
    assert metadata["num_rejected"] == 0


def _expect_error_before_work(data, tmp_path, message):
    with pytest.raises(TlpError, match=message):
        preprocess.run(str(data), str(tmp_path / "out"), str(tmp_path / "m.parquet"), 32,
                       0.6, 0.2, 0.2, seed=1)
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_an_error(tmp_path):
    _expect_error_before_work(tmp_path / "nowhere", tmp_path, "does not exist")


def test_single_class_is_an_error(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 3})
    _expect_error_before_work(data, tmp_path, r"has 1 class\(es\) \(red\).*at least 2")


def test_empty_class_is_an_error(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 3, "green": 3})
    (data / "blue").mkdir()
    (data / "blue" / "readme.txt").write_text("no images here")
    _expect_error_before_work(data, tmp_path, "blue holds no images")


@pytest.mark.parametrize("ratios, message", [
    ((0.8, 0.1, 0.2), "sum to 1.1"),
    ((0.9, 0.1, 0.0), "test_ratio=0.0"),
])
def test_bad_ratios_are_rejected(ratios, message):
    with pytest.raises(TlpError, match=message):
        preprocess.validate_ratios(*ratios)


def test_empty_split_is_an_error(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 2, "blue": 2})
    with pytest.raises(TlpError, match="split is empty"):
        _run(data, tmp_path, ratios=(0.8, 0.1, 0.1))


def test_killed_run_then_rerun_gives_the_same_output(tmp_path):
    data = make_image_folder(tmp_path / "images", {"red": 150, "blue": 150}, size=(300, 200))
    killed = tmp_path / "killed"
    script = (f"from components import preprocess; preprocess.run({str(data)!r}, "
              f"{str(killed / 'out')!r}, {str(killed / 'm.parquet')!r}, 32, 0.6, 0.2, 0.2, 1, "
              "num_workers=1)")
    process = subprocess.Popen([sys.executable, "-c", script])
    while not (killed / "out").exists():  # Created once the files are listed.
        assert process.poll() is None
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not (killed / "out" / "metadata.json").exists()
    _run(data, killed)
    _run(data, tmp_path / "clean")
    names = sorted(p.name for p in (tmp_path / "clean" / "out").iterdir())
    assert names == sorted(p.name for p in (killed / "out").iterdir())
    for name in names:
        assert (killed / "out" / name).read_bytes() == (tmp_path / "clean" / "out" / name
                                                        ).read_bytes()


def _outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_groups_merged_give_the_dataset_of_one_step(tmp_path, image_folder):
    """The fan-out, in 3 groups: with a duplicate, a label conflict across groups, a rejected
    file and several shards per split, the same bytes as one step."""
    shutil.copy(image_folder / "red" / "red-000.png", image_folder / "red" / "zz-copy.png")
    shutil.copy(image_folder / "green" / "green-001.png", image_folder / "red" / "oops.png")
    (image_folder / "blue" / "notes.txt").write_text("not an image")
    shard_size_mb = 0.005  # A fraction of a MB: several shards from tiny images.
    _run(image_folder, tmp_path / "one", shard_size_mb=shard_size_mb)
    preprocess.save_listing(str(image_folder), tmp_path / "listing")
    options = preprocess.images.EncodeOptions(32)
    parts = [tmp_path / f"part-{group}" for group in range(3)]
    for group, part in reversed(list(enumerate(parts))):  # Any order of arrival.
        preprocess.encode_group(tmp_path / "listing", group, 3, part, options, num_workers=1)
    metadata = preprocess.merge(parts, str(tmp_path / "out"), str(tmp_path / "m.parquet"),
                                0.6, 0.2, 0.2, 1, shard_size_mb=shard_size_mb, num_workers=2,
                                min_images_per_class=1)
    assert len(metadata["shards"]["train"]) > 1
    assert metadata["summary"]["duplicates"] == 1 and metadata["summary"]["rejected"] == 3
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "one" / "out")
    assert pq.read_table(tmp_path / "m.parquet") == pq.read_table(tmp_path / "one" / "m.parquet")
    with pytest.raises(RuntimeError, match="do not make up one listing's 3 groups"):
        preprocess.merge(parts[:2], str(tmp_path / "out"), str(tmp_path / "m.parquet"),
                         0.6, 0.2, 0.2, 1)


def _png_claiming(width: int, height: int, cut: bool = False) -> bytes:
    """A small PNG whose header claims other dimensions (free to claim: a decompression
    bomb); cut: its header chunk cut short."""
    out = io.BytesIO()
    make_image((200, 30, 30), (40, 30), 0).save(out, format="PNG")
    data = out.getvalue()
    body = struct.pack(">II", width, height) + data[24:29]
    body = body[:4] if cut else body
    chunk = b"IHDR" + body
    return data[:8] + struct.pack(">I", len(body)) + chunk + struct.pack(
        ">I", zlib.crc32(chunk)) + data[33:]


def _awkward_folder(root: Path) -> dict[str, tuple[str, str]]:
    """Every kind of entry a user's folder may hold, beside 6 good images per class:
    name (relative, as bytes) -> the (status, reason) it must end with."""
    data = make_image_folder(root, {"red": 6, "green": 6})
    red, green = data / "red", data / "green"
    good = make_image((200, 30, 30), (40, 30), 99)
    expected = {}

    def add(name: bytes, status: str, reason: str | None) -> Path:
        expected[name] = (status, reason)
        return Path(os.fsdecode(bytes(data) + b"/" + name))

    add(b"red/zero.jpg", "rejected", "unreadable").write_bytes(b"")
    jpeg = io.BytesIO()
    good.save(jpeg, format="JPEG")
    add(b"red/truncated.jpg", "rejected", "truncated").write_bytes(jpeg.getvalue()[:400])
    add(b"red/text.png", "rejected", "unreadable").write_text("hello, I am text")
    add(b"red/bomb.png", "rejected", "too large").write_bytes(_png_claiming(100_000, 100_000))
    add(b"red/cut-header.png", "rejected", "unreadable").write_bytes(
        _png_claiming(40, 30, cut=True))  # PIL raises ValueError: it stopped the run.
    good.convert("CMYK").save(add(b"red/cmyk.jpg", "written", None))
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(
        add(b"red/16-bit.png", "written", None))
    palette = good.convert("P")
    palette.info["transparency"] = 0
    palette.save(add(b"red/palette-transparent.png", "written", None))
    frames = [make_image((200, 30, 30), (40, 30), seed) for seed in (100, 101)]
    frames[0].save(add(b"red/animated.gif", "written", None), save_all=True,
                   append_images=frames[1:])
    make_image((200, 30, 30), (40, 30), 102).save(add(b"red/new\nline.png", "written", None))
    make_image((200, 30, 30), (40, 30), 103).save(add(b"red/caf\xe9.png", "written", None))
    (red / "folder.jpg").mkdir()  # A folder named like an image: its contents count.
    make_image((200, 30, 30), (40, 30), 104).save(add(b"red/folder.jpg/inner.png", "written",
                                                      None))
    add(b"red/empty.png", "rejected", "unsupported").mkdir()
    add(b"green/gone.jpg", "rejected", "missing").symlink_to("/nonexistent/x.jpg")
    add(b"green/loop", "rejected", "unreadable").symlink_to(green)  # Never followed.
    add(b"green/self.jpg", "rejected", "unreadable").symlink_to(green / "self.jpg")
    os.mkfifo(add(b"green/pipe.jpg", "rejected", "unsupported"))  # Reading would block.
    add(b"green/locked.png", "rejected", "unreadable").write_bytes(
        (green / "green-000.png").read_bytes() + b"locked")
    add(b"README.md", "rejected", "unlabelled").write_text("about these images")
    (green / ".DS_Store").write_bytes(b"hidden: not listed")
    for i in range(6):
        for name in ("red", "green"):
            expected[f"{name}/{name}-{i:03d}.png".encode()] = ("written", None)
    return expected


def test_no_entry_stops_the_run_and_every_one_is_accounted_for(tmp_path, monkeypatch):
    """What `ls -R` shows, hidden files excepted, is each in the manifest: used or rejected
    with a reason. Unreadable files are chmod 000, and (as root reads them anyway) also
    refused by a patched read."""
    expected = _awkward_folder(tmp_path / "images")
    locked = tmp_path / "images" / "green" / "locked.png"
    locked.chmod(0)
    read_bytes = storage.read_bytes

    def refuse_locked(uri):
        if uri == str(locked):
            raise PermissionError(13, "Permission denied", uri)
        return read_bytes(uri)

    monkeypatch.setattr(storage, "read_bytes", refuse_locked)
    metadata, rows = _run(tmp_path / "images", tmp_path, max_image_pixels=10_000_000,
                          max_rejected_fraction=1.0)
    prefix = f"{tmp_path / 'images'}/"
    outcome = {sources.printable(os.fsdecode(name)): value for name, value in expected.items()}
    assert {row["source_path"].removeprefix(prefix): (row["status"], row["reason"])
            for row in rows} == outcome
    assert len(rows) == len(expected)
    by_name = {row["source_path"].removeprefix(prefix): row for row in rows}
    assert "red/new\\nline.png" in by_name and "red/caf\\xe9.png" in by_name
    assert by_name["green/gone.jpg"]["detail"] == "link to /nonexistent/x.jpg, which does " \
                                                  "not exist"
    summary = metadata["summary"]
    assert summary["inputs"] == len(expected) == summary["written"] + summary["rejected"]
    assert summary["rejected_unlabelled"] == 1 and summary["rejected_missing"] == 1
