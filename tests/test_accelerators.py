import keras
import pytest

from components import accelerators, configs
from components.errors import TlpError


@pytest.mark.parametrize("mode, capabilities, policy", [
    ("auto", [], "float32"),
    ("auto", [(9, 0)], "mixed_bfloat16"),
    ("auto", [(9, 0), (7, 5)], "mixed_float16"),
    ("float16", [(9, 0)], "mixed_float16"),
    ("off", [(9, 0)], "float32"),
])
def test_policy_follows_the_gpus(mode, capabilities, policy):
    assert accelerators.choose_policy(mode, capabilities) == policy


def test_unknown_mode_is_rejected():
    with pytest.raises(TlpError, match="mixed_precision='fp8'"):
        accelerators.choose_policy("fp8", [])


def test_cpu_only_keeps_float32():
    assert accelerators.configure("auto") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_classifier_stays_float32_under_mixed_precision():
    from components import model as model_lib

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("classifier").compute_dtype == "float32"
    assert model_lib.backbone_of(model).layers[2].compute_dtype == "bfloat16"


@pytest.mark.parametrize("batch_size, examples, expected", [(8, 100, 8), (8, 7, 6), (8, 6, 6)])
def test_batches_split_evenly_over_the_replicas(monkeypatch, batch_size, examples, expected):
    monkeypatch.setattr(accelerators, "replicas_in_use", lambda: 2)
    assert accelerators.replica_batch_size(batch_size, examples, "validation") == expected


def test_batches_that_cannot_split_evenly_are_rejected(monkeypatch):
    monkeypatch.setattr(accelerators, "replicas_in_use", lambda: 4)
    with pytest.raises(TlpError, match="batch_size=10 does not split evenly over 4 "):
        accelerators.replica_batch_size(10, 100, "train")
    with pytest.raises(TlpError, match="validation split has 3 image"):
        accelerators.replica_batch_size(8, 3, "validation")


def test_jax_needs_splits_that_divide_evenly(monkeypatch):
    monkeypatch.setattr(accelerators, "replicas_in_use", lambda: 2)
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    assert accelerators.replica_batch_size(8, 18, "train") == 8
    with pytest.raises(TlpError, match="train split has 17 images.*use backend tensorflow"):
        accelerators.replica_batch_size(8, 17, "train")


def test_one_device_keeps_the_batch_size():
    assert accelerators.replicas_in_use() == 1
    assert accelerators.replica_batch_size(9, 4, "validation") == 9


def test_cpu_only_prints_that_it_trains_on_the_cpu(monkeypatch, capsys):
    monkeypatch.delenv(configs.REQUIRE_GPU_ENV, raising=False)
    accelerators.configure("auto")
    assert "accelerators: training on CPU\n" in capsys.readouterr().out


def test_a_step_compiled_for_gpus_fails_without_one(monkeypatch):
    """tensorflow-cpu, as in this venv and the CPU image: the message says why and what to do."""
    monkeypatch.setenv(configs.REQUIRE_GPU_ENV, "1")
    with pytest.raises(TlpError, match=(
            r"TLP_REQUIRE_GPU=1: this step was compiled to train on 1 GPU\(s\), but Keras's "
            r"tensorflow backend finds no GPU; it sees only CPU:0\. TensorFlow 2\.21\.0 is "
            r"built without CUDA .*GPU image \(tlp-gpu.*device plugin.*--gpu-count 0")):
        accelerators.configure("auto")


@pytest.mark.parametrize("value", ["", "0"])
def test_no_gpu_is_required_unless_compiled_for_one(monkeypatch, value):
    monkeypatch.setenv(configs.REQUIRE_GPU_ENV, value)
    assert accelerators.configure("auto") == "float32"


def test_jax_without_its_cuda_plugin_is_named(monkeypatch):
    monkeypatch.setenv(configs.REQUIRE_GPU_ENV, "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(accelerators, "_installed", lambda name: None)
    with pytest.raises(TlpError, match=(
            r"compiled to train on 2 GPU\(s\), but Keras's jax backend finds no GPU; it sees "
            r"only cpu:0\. jax \S+ has no CUDA plugin installed .*CPU-only build; the GPU image "
            r"installs jax\[cuda12\]==\S+\. CUDA_VISIBLE_DEVICES=''\. Likely fixes")):
        accelerators.check_required_gpus("jax", [], lambda: ["cpu:0"])
    monkeypatch.setattr(accelerators, "_installed",
                        lambda name: "0.10.2" if name == "jax-cuda12-plugin" else None)
    with pytest.raises(TlpError, match=r"CUDA plugin \(jax-cuda12-plugin 0\.10\.2\) but the "
                                       r"plugin found no usable GPU"):
        accelerators.check_required_gpus("jax", [], lambda: ["cpu:0"])


def test_gpus_found_pass_the_check_and_are_printed(monkeypatch, capsys):
    monkeypatch.setenv(configs.REQUIRE_GPU_ENV, "2")
    accelerators.check_required_gpus("jax", ["cuda:0 (NVIDIA H100 80GB HBM3)"])
    assert "TLP_REQUIRE_GPU=2 but jax sees 1 GPU(s)" in capsys.readouterr().out
    assert accelerators.describe_devices(["cuda:0 (NVIDIA H100 80GB HBM3)"]) \
        == "1 device(s): cuda:0 (NVIDIA H100 80GB HBM3)"
