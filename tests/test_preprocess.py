import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from components import preprocess
from components.errors import TlpError
from conftest import make_image_folder


def _splits(dataset_dir):
    return json.loads((dataset_dir / "metadata.json").read_text())


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
    assert not list((tmp_path / "out").glob("*.partial"))
    rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
    assert len(rows) == 32  # Every input file, written or not.
    rejected = {r["source_path"].rsplit("/", 1)[1]: r for r in rows if r["status"] == "rejected"}
    assert rejected.keys() == {"corrupt.png", "notes.txt"}
    assert rejected["corrupt.png"]["reason"].startswith("unreadable image")
    assert rejected["notes.txt"]["reason"] == "unsupported file type '.txt'"
    assert all(r["split"] is None for r in rejected.values())
    assert all(len(r["sha256"]) == 64 for r in rows if r["status"] == "written")


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
    _expect_error_before_work(data, tmp_path, "has 1 class sub-folder.*at least 2")


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
        preprocess.run(str(data), str(tmp_path / "out"), str(tmp_path / "m.parquet"), 32,
                       0.8, 0.1, 0.1, seed=1)
