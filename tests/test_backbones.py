"""Every keras.applications backbone: the catalog's sizes, parameter counts and preprocessing
against Keras itself, each one built into the classifier, and `tlp backbones`."""
import json

import keras
import numpy as np
import pytest
from keras import applications
from keras.src.applications import imagenet_utils

from components import backbone_catalog, backbones, model as model_lib
from components.errors import TlpError
from pipelines import cli

NAMES = list(backbones.BACKBONES)
# Each preprocessing mode, written out independently of Keras: [0, 255] RGB -> model input.
EXPECTED_PREPROCESSING = {
    "tf": lambda x: x / 127.5 - 1,
    "caffe": lambda x: x[..., ::-1] - np.array([103.939, 116.779, 123.68]),
    "torch": lambda x: (x / 255 - np.array([0.485, 0.456, 0.406]))
    / np.array([0.229, 0.224, 0.225]),
    "none": lambda x: x,
}


def test_every_image_classification_model_of_keras_applications_is_offered():
    models = {name for name in dir(applications) if name[0].isupper()}
    assert set(NAMES) == models and len(NAMES) == 40


def _mode(name: str) -> str:
    return backbone_catalog.FAMILIES[backbones.BACKBONES[name].family].preprocessing


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_layer_is_the_family_preprocess_input(name):
    x = np.random.default_rng(0).uniform(0, 255, (2, 7, 5, 3)).astype("float32")
    module = applications.__dict__[name].__module__.rsplit(".", 1)[-1]
    family_function = getattr(applications, module).preprocess_input
    expected = family_function(x.copy())  # The NumPy path may work in place.
    got = keras.ops.convert_to_numpy(backbones.BackbonePreprocessing(name)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got, EXPECTED_PREPROCESSING[_mode(name)](x), rtol=1e-5,
                               atol=1e-4)


class _Sizes(Exception):
    pass


def _keras_sizes(monkeypatch, name: str) -> tuple[int, int]:
    """(default size, minimum size) as the constructor passes them to Keras's input-shape
    check, which is stopped there, so no model is built."""
    def record(input_shape, default_size, min_size, **kwargs):
        raise _Sizes(default_size, min_size)

    monkeypatch.setattr(imagenet_utils, "obtain_input_shape", record)
    with pytest.raises(_Sizes) as sizes:
        getattr(applications, name)(include_top=False, weights=None)
    return sizes.value.args


# MobileNetV3 has no such check: it needs 32 px, and loads its ImageNet weights for 224.
@pytest.mark.parametrize("name", [name for name in NAMES if not name.startswith("MobileNetV3")])
def test_native_and_minimum_sizes_are_those_keras_declares(monkeypatch, name):
    spec = backbones.BACKBONES[name]
    assert _keras_sizes(monkeypatch, name) == (spec.native_image_size, spec.min_image_size)


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_builds_at_its_minimum_size_with_its_preprocessing(name):
    """weights=none, the smallest input Keras allows: the table's parameter count, 4-D
    features for the head's pooling, the model's rescaling inside it only where its family's
    preprocess_input leaves the input as it is, and class probabilities out."""
    spec = backbones.BACKBONES[name]
    size = spec.min_image_size
    model = model_lib.build_model(3, name, size, "none",
                                  augmentation=model_lib.Augmentation.none())
    base = model_lib.backbone_of(model)
    assert base.count_params() == spec.parameters
    batch, height, width, channels = base.output.shape
    assert height >= 1 and width >= 1 and channels
    assert model.get_layer("preprocessing").backbone == name
    rescales = any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
                   for layer in base.layers)
    assert rescales == (_mode(name) == "none")
    x = np.random.default_rng(1).uniform(0, 255, (1, size, size, 3)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(model(x))
    assert probabilities.shape == (1, 3)
    np.testing.assert_allclose(probabilities.sum(), 1, rtol=1e-5)


@pytest.mark.parametrize("name", ["MobileNetV3Small", "NASNetMobile"])
def test_parameter_counts_hold_at_the_native_size(name):
    spec = backbones.BACKBONES[name]
    model = getattr(applications, name)(include_top=False, weights=None, input_shape=(
        spec.native_image_size, spec.native_image_size, 3))
    assert model.count_params() == spec.parameters


def test_image_size_0_is_the_native_size_and_errors_name_the_fix():
    assert backbones.resolve_image_size("EfficientNetB7", 0) == 600
    assert backbones.resolve_image_size("NASNetLarge", 0) == 331
    assert backbones.resolve_image_size("Xception", 100) == 100
    with pytest.raises(TlpError, match=r"image_size=70 is too small for Xception: it needs "
                                       r"at least 71 pixels; or set image_size to 0 for its "
                                       r"native 299"):
        backbones.validate_image_size("Xception", 70)
    with pytest.raises(TlpError, match=r"image_size=-1 is too small for VGG16"):
        backbones.resolve_image_size("VGG16", -1)
    with pytest.raises(TlpError, match=r"unknown backbone 'ResNet18': set backbone to one of "
                                       r"MobileNet, MobileNetV2, .*InceptionResNetV2 "
                                       r"\(`tlp backbones` describes each\)"):
        backbones.get_backbone("ResNet18")
    model = model_lib.build_model(3, "MobileNetV3Small", 0, "none")
    assert model.input_shape == (None, 224, 224, 3)


def test_tlp_backbones_lists_each_in_a_table_and_as_json(capsys):
    assert cli.main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "native", "px"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    assert set(NAMES) <= set(rows)
    assert rows["EfficientNetB7"].split()[1:5] == ["EfficientNet", "600", "32", "64.1"]
    assert "caffe: BGR - mean" in rows["ResNet50"] and "in model" in rows["ConvNeXtTiny"]
    assert "offline: tlp demo-weights" in rows["MobileNetV2"]
    assert "offline" not in rows["ResNet50"]
    assert cli.main(["backbones", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == NAMES
    assert listed[NAMES.index("InceptionV3")] == {
        "name": "InceptionV3", "family": "InceptionV3", "native_image_size": 299,
        "min_image_size": 75, "parameters": 21_802_784, "preprocessing": "[-1, 1]",
        "fine_tune_unit": "layers", "weights": backbone_catalog.KERAS_WEIGHTS}


def test_tlp_backbones_starts_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from pipelines import cli; cli.main(['backbones']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
