"""Perceptual hashes and near-duplicate groups on real photos: the bundled Fashion-MNIST
sample, and Fashion-MNIST itself (Debian package dataset-fashion-mnist) upscaled to photo
size; the groups' use in preprocess (one split per group, the same groups when fanned out)."""
import io
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageChops

from components import configs, fashion_mnist, images, near_duplicates, preprocess

SAMPLE = configs.SAMPLE_DATA_DIR
DISTANCE = configs.NEAR_DUPLICATE_DISTANCE


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(out.getvalue()))


def _crop(image: Image.Image, left: float, top: float) -> Image.Image:
    width, height = image.size
    return image.crop((round(width * left), round(height * top), width, height))


COPIES = {
    "resized to half": lambda im: im.resize((im.width // 2, im.height // 2),
                                            Image.Resampling.BILINEAR),
    "JPEG quality 60": lambda im: _jpeg(im, 60),
    "cropped 5% at the left": lambda im: _crop(im, 0.05, 0),
    "cropped 5% at a corner": lambda im: _crop(im, 0.05, 0.05),
    "cropped 5% around": lambda im: im.crop((round(im.width * 0.025), round(im.height * 0.025),
                                             round(im.width * 0.975), round(im.height * 0.975))),
    "brighter by 20": lambda im: ImageChops.add(im, Image.new("RGB", im.size, (20, 20, 20))),
}


def _photos() -> list[Image.Image]:
    """Real photos at camera size: sample images, and Fashion-MNIST upscaled to 640 px."""
    photos = [Image.open(path).convert("RGB").resize((320, 320), Image.Resampling.BICUBIC)
              for path in sorted(SAMPLE.glob("*/*.png"))[::125]]
    if fashion_mnist.SOURCE_DIR.is_dir():
        pixels, _ = fashion_mnist.load("test")
        photos += [Image.fromarray(pixels[i]).convert("RGB").resize(
            (640, 640), Image.Resampling.BICUBIC) for i in range(0, 1000, 125)]
    return photos


@pytest.mark.parametrize("copy", COPIES)
def test_copies_group_with_their_original(copy):
    originals = _photos()
    hashes = [near_duplicates.perceptual_hashes(im) for im in originals]
    hashes += [near_duplicates.perceptual_hashes(COPIES[copy](im)) for im in originals]
    groups = near_duplicates.group(hashes, DISTANCE)
    count = len(originals)
    assert groups[count:] == groups[:count]  # Each copy in its original's group...
    assert len(set(groups)) == count  # ...and the originals apart.


def test_distinct_photos_of_one_class_do_not_group():
    """The sample's 100 images of each class: at the default distance only look-alikes group
    (side views of sneakers, plain pullovers; README, Near-duplicates); the other classes
    have none."""
    by_class = defaultdict(list)
    for path in sorted(SAMPLE.glob("*/*.png")):
        by_class[path.parent.name].append(near_duplicates.perceptual_hashes(Image.open(path)))
    grouped = {}
    for name, hashes in by_class.items():
        sizes = Counter(near_duplicates.group(hashes, DISTANCE))
        grouped[name] = sorted(size for size in sizes.values() if size > 1)
    assert grouped == {**dict.fromkeys(by_class, []), "Sneaker": [2, 2, 3, 6],
                       "Pullover": [2]}


def test_multi_index_search_finds_exactly_the_pairs_within_the_distance():
    rng = np.random.default_rng(0)
    primary = rng.integers(0, 2**63, 400, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    near = primary[:100] ^ (np.uint64(1) << rng.integers(0, 64, 100).astype(np.uint64))
    primary = np.concatenate([primary, near])  # 100 planted pairs one bit apart.
    hashes = np.stack([primary, rng.integers(0, 2**63, len(primary), dtype=np.uint64)], 1)
    for distance in (1, 4, 9, 12):
        def within(a, b):
            return np.bitwise_count(a[:, None] ^ b[None, :]) <= distance
        brute = within(hashes[:, 0], hashes[:, 0]) | within(hashes[:, 1], hashes[:, 0]) \
            | within(hashes[:, 1], hashes[:, 0]).T
        expected = np.argwhere(np.triu(brute, 1))
        found = near_duplicates.candidate_pairs(hashes, distance)
        assert found.tolist() == expected.tolist()
        assert len(found) >= 100


def test_no_distance_no_groups():
    hashes = [[7, 7], [7, 7], [8, 8]]
    assert near_duplicates.group(hashes, 0) == [0, 1, 2]
    assert near_duplicates.group(hashes, 1) == [0, 0, 2]


def _folder_with_copies(root: Path) -> tuple[Path, dict[str, str]]:
    """Sample images of 3 classes, 12 each, and 3 near-copies of each class's first 4
    (resized, JPEG quality 60, cropped):
    copy file name -> original's."""
    originals = {}
    for name in ("Bag", "Sandal", "Trouser"):
        (root / name).mkdir(parents=True)
        for index, path in enumerate(sorted((SAMPLE / name).glob("*.png"))[:12]):
            image = Image.open(path).convert("RGB").resize((224, 224),
                                                          Image.Resampling.BICUBIC)
            image.save(root / name / f"{path.stem}.jpg", quality=95)
            if index < 4:
                for copy, make in list(COPIES.items())[:3]:
                    copy_name = f"{path.stem}-{copy.replace(' ', '-')}.jpg"
                    make(image).convert("RGB").save(root / name / copy_name, quality=90)
                    originals[copy_name] = f"{path.stem}.jpg"
    return root, originals


def _run(data: Path, out: Path, **options) -> list[dict]:
    preprocess.run(str(data), str(out / "dataset"), str(out / "m.parquet"), 32, 0.6, 0.2, 0.2,
                   1, num_workers=1, min_images_per_class=1, **options)
    return pq.read_table(out / "m.parquet").to_pylist()


def test_a_group_never_spans_splits_and_the_summary_counts_groups(tmp_path):
    data, originals = _folder_with_copies(tmp_path / "images")
    rows = _run(data, tmp_path / "out")
    by_name = {row["source_path"].rsplit("/", 1)[-1]: row for row in rows}
    for copy, original in originals.items():
        assert by_name[copy]["group"] == by_name[original]["group"] is not None
    splits_of = defaultdict(set)
    for row in rows:
        assert len(row["phash"]) == 16
        if row["group"]:
            splits_of[row["group"]].add(row["split"])
    assert splits_of and all(len(splits) == 1 for splits in splits_of.values())
    assert any(splits == {"test"} for splits in splits_of.values())
    summary = preprocess.summarize([preprocess.SourceFile(
        r["source_path"], r["label"], r["label_index"], status=r["status"], split=r["split"],
        group=r["group"] or "") for r in rows])
    assert summary["near_duplicate_groups"] == len(splits_of)
    assert summary["near_duplicate_images"] == sum(1 for r in rows if r["group"])
    off = _run(data, tmp_path / "off", near_duplicate_distance=0)
    assert not any(row["group"] for row in off)


def test_the_fan_out_gives_the_same_groups(tmp_path):
    data, _ = _folder_with_copies(tmp_path / "images")
    one = _run(data, tmp_path / "one")
    preprocess.save_listing(str(data), tmp_path / "listing")
    parts = [tmp_path / f"part-{group}" for group in range(3)]
    for group, part in enumerate(parts):
        preprocess.encode_group(tmp_path / "listing", group, 3, part,
                                images.EncodeOptions(32), num_workers=1)
    preprocess.merge(parts, str(tmp_path / "fan" / "dataset"), str(tmp_path / "fan.parquet"),
                     0.6, 0.2, 0.2, 1, min_images_per_class=1)
    assert pq.read_table(tmp_path / "fan.parquet").to_pylist() == one
    assert sum(1 for row in one if row["group"]) >= 3 * 4 * 4


@pytest.mark.parametrize("distance", [-1, configs.MAX_NEAR_DUPLICATE_DISTANCE + 1])
def test_distance_out_of_range_is_named(distance):
    with pytest.raises(preprocess.TlpError, match=f"near_duplicate_distance={distance}"):
        preprocess.validate_near_duplicate_distance(distance)


def test_a_group_joins_the_split_of_its_pinned_image_and_classes_stay_stratified():
    files = [preprocess.SourceFile(f"{i}.png", "a", 0, sha256=f"{i:064x}") for i in range(40)]
    for source in files[:4]:
        source.group = files[0].sha256
    ratios = {"train": 0.5, "validation": 0.25, "test": 0.25}
    preprocess.assign_splits(files, ratios, seed=3, pinned={files[2].sha256: "test"})
    assert {source.split for source in files[:4]} == {"test"}
    counts = Counter(source.split for source in files)
    assert all(abs(counts[split] - ratio * 40) <= 4 for split, ratio in ratios.items())


def test_many_alike_hashes_are_checked_in_small_batches(monkeypatch):
    """A bucket of many alike hashes (blank images, say) is expanded batch by batch."""
    monkeypatch.setattr(near_duplicates, "_BATCH", 7)
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, (300, 2), dtype=np.uint64)
    hashes[:60, 0] = 12345
    found = near_duplicates.candidate_pairs(hashes, 4)
    near = np.bitwise_count(hashes[:, None, :] ^ hashes[None, :, :1]) <= 4  # [i, j, hash of i]
    expected = np.argwhere(np.triu(near.any(axis=2) | near.any(axis=2).T, 1))
    assert found.tolist() == expected.tolist() and len(found) >= 60 * 59 // 2
    assert len(set(near_duplicates.group(hashes.tolist(), 4)[:60])) == 1
