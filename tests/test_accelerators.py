import keras
import pytest

from components import accelerators
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
