"""Pretrained backbones from keras.applications, each with its own input preprocessing."""
from collections.abc import Callable
from dataclasses import dataclass

import keras
from keras import applications as apps

from components import configs, hub_backbones, storage
from components.errors import TlpError

BACKBONE_LAYER_NAME = "backbone"


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    # Maps float images in [0, 255] to what the backbone was trained on; identity for
    # backbones that rescale inside the model (EfficientNet, MobileNetV3, ConvNeXt).
    preprocess_input: Callable
    min_image_size: int = 32


BACKBONES: dict[str, Backbone] = {
    "MobileNetV2": Backbone(apps.MobileNetV2, apps.mobilenet_v2.preprocess_input),
    "MobileNetV3Small": Backbone(apps.MobileNetV3Small, apps.mobilenet_v3.preprocess_input),
    "MobileNetV3Large": Backbone(apps.MobileNetV3Large, apps.mobilenet_v3.preprocess_input),
    "EfficientNetB0": Backbone(apps.EfficientNetB0, apps.efficientnet.preprocess_input),
    "EfficientNetB1": Backbone(apps.EfficientNetB1, apps.efficientnet.preprocess_input),
    "EfficientNetB2": Backbone(apps.EfficientNetB2, apps.efficientnet.preprocess_input),
    "EfficientNetB3": Backbone(apps.EfficientNetB3, apps.efficientnet.preprocess_input),
    "EfficientNetV2B0": Backbone(apps.EfficientNetV2B0, apps.efficientnet_v2.preprocess_input),
    "ResNet50": Backbone(apps.ResNet50, apps.resnet50.preprocess_input),
    "ResNet50V2": Backbone(apps.ResNet50V2, apps.resnet_v2.preprocess_input),
    "VGG16": Backbone(apps.VGG16, apps.vgg16.preprocess_input),
    "VGG19": Backbone(apps.VGG19, apps.vgg19.preprocess_input),
    "Xception": Backbone(apps.Xception, apps.xception.preprocess_input, min_image_size=71),
    "InceptionV3": Backbone(apps.InceptionV3, apps.inception_v3.preprocess_input,
                            min_image_size=75),
    "DenseNet121": Backbone(apps.DenseNet121, apps.densenet.preprocess_input),
    "ConvNeXtTiny": Backbone(apps.ConvNeXtTiny, apps.convnext.preprocess_input),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise TlpError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def validate_image_size(name: str, image_size: int) -> None:
    if hub_backbones.is_hub(name):  # Resized to the preset's own size inside the model.
        return
    minimum = get_backbone(name).min_image_size
    if image_size < minimum:
        raise TlpError(f"image_size={image_size} is too small for {name}: it needs at least "
                       f"{minimum} pixels.")


@keras.saving.register_keras_serializable(package="tlp")
class BackbonePreprocessing(keras.layers.Layer):
    """The backbone's own preprocess_input as a layer, so saved models carry it."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        return BACKBONES[self.backbone].preprocess_input(images)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copies the weights of every target layer that has a same-named layer with the same
    weight shapes anywhere in source (nested models included). Returns how many."""
    by_name = {layer.name: layer for layer in _all_layers(source) if layer.weights}
    copied = 0
    for layer in target.layers:
        match = by_name.get(layer.name)
        if layer.weights and match is not None and \
                [w.shape for w in match.weights] == [w.shape for w in layer.weights]:
            layer.set_weights(match.get_weights())
            copied += 1
    return copied


def _is_whole_model(path: str) -> bool:
    """A .keras archive or a legacy .h5 holding a model config, not a bare weights file."""
    if path.endswith(".keras"):
        return True
    if path.endswith(".weights.h5") or not path.endswith(".h5"):
        return False
    import h5py

    with h5py.File(path, "r") as f:
        return "model_config" in f.attrs


def load_weights(model: keras.Model, path: str) -> None:
    """From a weights file for this backbone, or from a whole Keras model whose matching
    layers are copied by name (reports how many; fails if none). A file in a bucket is
    downloaded first: Keras loads local files only."""
    if not storage.exists(path):
        raise TlpError(f"weights file {path} does not exist: pass weights=imagenet, "
                       "weights=none or the path of a weights file.")
    with storage.local_copy(path) as local:
        if not _is_whole_model(local):
            model.load_weights(local)
            return
        source = keras.models.load_model(local, compile=False)
    copied = copy_weights_by_name(source, model)
    weighted = sum(bool(layer.weights) for layer in model.layers)
    if not copied:
        raise TlpError(f"no layer of {path} matches the backbone's layers by name and shape.")
    print(f"weights: copied {copied} of {weighted} weighted backbone layers from {path}",
          flush=True)


def build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """weights: 'imagenet', 'none', or the path/URI of a weights file for this backbone or of
    a whole Keras model to copy matching layers from. backbone=hub:PRESET: the preset's
    image tower (components/hub_backbones.py; 'imagenet': the preset's own weights)."""
    if hub_backbones.is_hub(name):
        return hub_backbones.build(name, image_size, weights)[0]
    spec = get_backbone(name)
    validate_image_size(name, image_size)
    preset = weights if weights == "imagenet" else None
    try:
        model = spec.constructor(include_top=False, weights=preset,
                                 input_shape=(image_size, image_size, 3))
    except Exception as error:  # Keras raises assorted errors when the download fails.
        if preset is None:
            raise
        raise TlpError(f"could not load ImageNet weights for {name} ({error}). Offline, derive "
                       "the demo weights with `tlp demo-weights` and pass their path as "
                       "weights, or pass weights=none.") from error
    # Renamed afterwards: EfficientNetV2 looks its architecture up by the `name` argument.
    model.name = BACKBONE_LAYER_NAME
    if weights == "none":
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = configs.FROM_SCRATCH_BATCH_NORM_MOMENTUM
    if weights not in ("imagenet", "none"):
        try:
            load_weights(model, weights)
        except TlpError:
            raise
        except (ValueError, OSError) as error:
            raise TlpError(f"weights file {weights} does not fit {name}: {error}") from error
    return model
