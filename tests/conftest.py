"""Shared fixtures: tiny labelled image folders made by the tests, and one local run of
the whole pipeline that several tests inspect."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def make_image(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """A flat colour with noise, so classes are easy to tell apart."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def make_image_folder(root: Path, per_class: dict[str, int], size=(40, 30),
                      suffix: str = ".png") -> Path:
    """root/<class>/<class>-<i><suffix>, colours from COLOURS (grey for other names)."""
    for class_index, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = make_image(COLOURS.get(name, (128, 128, 128)), size, 1000 * class_index + i)
            image.save(folder / f"{name}-{i:03d}{suffix}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", {"red": 10, "green": 10, "blue": 10})


@pytest.fixture
def tiny_dataset(tmp_path: Path, image_folder: Path) -> Path:
    from components import preprocess

    out = tmp_path / "dataset"
    preprocess.run(str(image_folder), str(out), str(tmp_path / "manifest.parquet"), 32,
                   0.6, 0.2, 0.2, seed=1)
    return out


E2E_ARGUMENTS = dict(backbone="MobileNetV2", weights="none", image_size=32, epochs=1,
                     fine_tune_epochs=1, fine_tune_layers=10, batch_size=8,
                     min_test_accuracy=0.0, top_k=2)


@pytest.fixture(scope="session")
def e2e_images(tmp_path_factory) -> Path:
    """The tiny data of the end-to-end runs: 3 classes of 10, and one unreadable file."""
    data = make_image_folder(tmp_path_factory.mktemp("e2e") / "images",
                             {"red": 10, "green": 10, "blue": 10})
    (data / "red" / "broken.jpg").write_bytes(b"not really a jpeg")
    return data


def e2e_arguments(data: Path) -> dict:
    """The pipeline arguments of the end-to-end runs, as `tlp run --local` makes them."""
    from pipelines.cli import build_parser, pipeline_arguments

    args = build_parser().parse_args(
        ["run", "--local", "--data-dir", str(data)]
        + [f"--{k.replace('_', '-')}={v}" for k, v in E2E_ARGUMENTS.items()])
    return pipeline_arguments(args, local=True)


@pytest.fixture(scope="session")
def local_run(e2e_images, tmp_path_factory):
    """One local kfp run of the whole pipeline on tiny data (fresh pipeline_root)."""
    from pipelines import runner

    return runner.run_local(e2e_arguments(e2e_images), tmp_path_factory.mktemp("root"))
