"""The backbones on offer, as data: every image-classification model keras.applications ships,
with its native input size, minimum size, parameter count, preprocessing, fine-tune unit and
weights source.

No Keras import here: `tlp backbones` lists them in milliseconds, and the preprocess step, which
forks its workers and never imports TensorFlow, resolves image_size 0 from it.
components/backbones.py builds the models.
"""
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from components.errors import TlpError

# backbone=hub:PRESET: a KerasHub preset (components/hub_backbones.py, which imports Keras).
HUB_PREFIX = "hub:"


def is_hub(name: str) -> bool:
    return name.startswith(HUB_PREFIX)

# How a family's own keras.applications preprocess_input maps [0, 255] RGB, as `tlp
# backbones` shows it (keras/src/applications/imagenet_utils.py's modes): tf to [-1, 1];
# caffe RGB to BGR minus the ImageNet mean of each channel; torch to [0, 1] then the ImageNet
# mean and standard deviation; none: unchanged, because the model rescales inside itself.
PREPROCESSING = {
    "tf": "[-1, 1]",
    "caffe": "caffe: BGR - mean",
    "torch": "torch: mean/std",
    "none": "in model",
}
# Pretrained weights: all ImageNet; only MobileNetV2's also offline (components/demo_weights.py).
KERAS_WEIGHTS = "Keras download"
DEMO_WEIGHTS = "Keras download; offline: tlp demo-weights"


@dataclass(frozen=True)
class Family:
    preprocessing: str  # A key of PREPROCESSING.
    min_image_size: int = 32  # Keras's own minimum input size for the family.


FAMILIES = {
    "MobileNet": Family("tf"),
    "MobileNetV2": Family("tf"),
    "MobileNetV3": Family("none"),
    "EfficientNet": Family("none"),
    "EfficientNetV2": Family("none"),
    "ConvNeXt": Family("none"),
    "ResNet": Family("caffe"),
    "ResNetV2": Family("tf"),
    "DenseNet": Family("torch"),
    "NASNet": Family("tf"),
    "VGG": Family("caffe"),
    "Xception": Family("tf", min_image_size=71),
    "InceptionV3": Family("tf", min_image_size=75),
    "InceptionResNetV2": Family("tf", min_image_size=75),
}


@dataclass(frozen=True)
class Backbone:
    name: str  # The keras.applications constructor.
    family: str  # A key of FAMILIES.
    native_image_size: int  # The size its ImageNet weights were trained at.
    parameters: int  # Without the top (include_top=False), as the pipeline uses it.
    weights: str = KERAS_WEIGHTS  # Where its pretrained weights come from.
    fine_tune_unit: str = "layers"  # What fine_tune_layers counts.

    @property
    def min_image_size(self) -> int:
        return FAMILIES[self.family].min_image_size

    @property
    def preprocessing(self) -> str:
        return PREPROCESSING[FAMILIES[self.family].preprocessing]

    @property
    def constructor(self):
        from keras import applications

        return getattr(applications, self.name)

    @property
    def preprocess_input(self):
        """The preprocess_input of the model's own keras.applications module: maps float
        images in [0, 255] to what the backbone was trained on (identity for those that
        rescale inside the model)."""
        return importlib.import_module(self.constructor.__module__).preprocess_input


# Parameter counts: keras.applications with include_top=False, weights=None (the same at any
# input size); tests/test_backbones.py builds every backbone and checks them.
BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in (
    Backbone("MobileNet", "MobileNet", 224, 3_228_864),
    Backbone("MobileNetV2", "MobileNetV2", 224, 2_257_984, weights=DEMO_WEIGHTS),
    Backbone("MobileNetV3Small", "MobileNetV3", 224, 939_120),
    Backbone("MobileNetV3Large", "MobileNetV3", 224, 2_996_352),
    Backbone("EfficientNetB0", "EfficientNet", 224, 4_049_571),
    Backbone("EfficientNetB1", "EfficientNet", 240, 6_575_239),
    Backbone("EfficientNetB2", "EfficientNet", 260, 7_768_569),
    Backbone("EfficientNetB3", "EfficientNet", 300, 10_783_535),
    Backbone("EfficientNetB4", "EfficientNet", 380, 17_673_823),
    Backbone("EfficientNetB5", "EfficientNet", 456, 28_513_527),
    Backbone("EfficientNetB6", "EfficientNet", 528, 40_960_143),
    Backbone("EfficientNetB7", "EfficientNet", 600, 64_097_687),
    Backbone("EfficientNetV2B0", "EfficientNetV2", 224, 5_919_312),
    Backbone("EfficientNetV2B1", "EfficientNetV2", 240, 6_931_124),
    Backbone("EfficientNetV2B2", "EfficientNetV2", 260, 8_769_374),
    Backbone("EfficientNetV2B3", "EfficientNetV2", 300, 12_930_622),
    Backbone("EfficientNetV2S", "EfficientNetV2", 384, 20_331_360),
    Backbone("EfficientNetV2M", "EfficientNetV2", 480, 53_150_388),
    Backbone("EfficientNetV2L", "EfficientNetV2", 480, 117_746_848),
    Backbone("ConvNeXtTiny", "ConvNeXt", 224, 27_820_128),
    Backbone("ConvNeXtSmall", "ConvNeXt", 224, 49_454_688),
    Backbone("ConvNeXtBase", "ConvNeXt", 224, 87_566_464),
    Backbone("ConvNeXtLarge", "ConvNeXt", 224, 196_230_336),
    Backbone("ConvNeXtXLarge", "ConvNeXt", 224, 348_147_968),
    Backbone("ResNet50", "ResNet", 224, 23_587_712),
    Backbone("ResNet101", "ResNet", 224, 42_658_176),
    Backbone("ResNet152", "ResNet", 224, 58_370_944),
    Backbone("ResNet50V2", "ResNetV2", 224, 23_564_800),
    Backbone("ResNet101V2", "ResNetV2", 224, 42_626_560),
    Backbone("ResNet152V2", "ResNetV2", 224, 58_331_648),
    Backbone("DenseNet121", "DenseNet", 224, 7_037_504),
    Backbone("DenseNet169", "DenseNet", 224, 12_642_880),
    Backbone("DenseNet201", "DenseNet", 224, 18_321_984),
    Backbone("NASNetMobile", "NASNet", 224, 4_269_716),
    Backbone("NASNetLarge", "NASNet", 331, 84_916_818),
    Backbone("VGG16", "VGG", 224, 14_714_688),
    Backbone("VGG19", "VGG", 224, 20_024_384),
    Backbone("Xception", "Xception", 299, 20_861_480),
    Backbone("InceptionV3", "InceptionV3", 299, 21_802_784),
    Backbone("InceptionResNetV2", "InceptionResNetV2", 299, 54_336_736),
)}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise TlpError(f"unknown backbone {name!r}: set backbone to one of "
                       f"{', '.join(BACKBONES)} (`tlp backbones` describes each).")
    return BACKBONES[name]


def validate_image_size(name: str, image_size: int) -> None:
    """image_size 0 stands for the backbone's native size; any other must be at least the
    backbone's minimum (a hub: preset takes any: the model resizes to the preset's own)."""
    if is_hub(name):
        if image_size < 0:
            raise TlpError(f"image_size={image_size} must be 0 (the preset's own size) or a "
                           f"size in pixels for {name}.")
        return
    spec = get_backbone(name)
    if image_size == 0:
        return
    if image_size < spec.min_image_size:
        raise TlpError(f"image_size={image_size} is too small for {name}: it needs at least "
                       f"{spec.min_image_size} pixels; or set image_size to 0 for its native "
                       f"{spec.native_image_size}.")


def resolve_image_size(name: str, image_size: int) -> int:
    """The size the pipeline resizes images to and builds the model at: image_size, or for
    0 the backbone's native size."""
    validate_image_size(name, image_size)
    if not image_size and is_hub(name):
        return hub_native_image_size(name)
    return image_size or get_backbone(name).native_image_size


# A hub: preset's size is in its files, which KerasHub reads (and downloads): that imports
# Keras and TensorFlow. A process that has not imported Keras (the preprocess step, which
# forks its workers) asks a child process instead, and stays without TensorFlow.
_HUB_SIZE_SCRIPT = """
import json, sys
from components import hub_backbones
from components.errors import TlpError
try:
    print("tlp-size", hub_backbones.resolved_image_size(sys.argv[1]))
except TlpError as error:
    print("tlp-error", json.dumps(str(error)))
"""


def hub_native_image_size(name: str) -> int:
    """backbone=hub:PRESET's own image size (hub_backbones.resolved_image_size)."""
    if "keras" in sys.modules:
        from components import hub_backbones

        return hub_backbones.resolved_image_size(name)
    root = str(Path(__file__).resolve().parents[1])
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join(filter(None, [
                       root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", _HUB_SIZE_SCRIPT, name],
                            capture_output=True, text=True, env=environment)
    for line in result.stdout.splitlines():
        if line.startswith("tlp-size "):
            return int(line.split()[1])
        if line.startswith("tlp-error "):
            raise TlpError(json.loads(line[len("tlp-error "):]))
    raise TlpError(f"could not read the image size of backbone={name!r}: "
                   f"{result.stderr.strip()[-2000:]}")


def describe() -> list[dict]:
    """One row per backbone, as `tlp backbones` lists them."""
    return [{"name": spec.name, "family": spec.family,
             "native_image_size": spec.native_image_size,
             "min_image_size": spec.min_image_size, "parameters": spec.parameters,
             "preprocessing": spec.preprocessing, "fine_tune_unit": spec.fine_tune_unit,
             "weights": spec.weights} for spec in BACKBONES.values()]
