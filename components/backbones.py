"""Pretrained backbones from keras.applications, each with its own input preprocessing.

Which backbones there are, their sizes and preprocessing: components/backbone_catalog.py."""
import keras

from components import configs, hub_backbones, storage
from components.backbone_catalog import (  # noqa: F401 (public here too)
    BACKBONES, Backbone, get_backbone, resolve_image_size, validate_image_size)
from components.errors import TlpError

BACKBONE_LAYER_NAME = "backbone"


@keras.saving.register_keras_serializable(package="tlp")
class BackbonePreprocessing(keras.layers.Layer):
    """The backbone's own preprocess_input as a layer, so saved models carry it."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        return get_backbone(self.backbone).preprocess_input(images)

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
    a whole Keras model to copy matching layers from. image_size 0: its native size.
    backbone=hub:PRESET: the preset's image tower (components/hub_backbones.py; 'imagenet':
    the preset's own weights)."""
    if hub_backbones.is_hub(name):
        return hub_backbones.build(name, resolve_image_size(name, image_size), weights)[0]
    spec = get_backbone(name)
    image_size = resolve_image_size(name, image_size)
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
    apply_weights(model, name, weights)
    return model


def apply_weights(model: keras.Model, name: str, weights: str) -> None:
    """What `weights` asks of a backbone built with its pretrained weights or none: for none,
    the BatchNorm momentum for training from scratch; for a file, its weights loaded."""
    if weights == "none":
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = configs.FROM_SCRATCH_BATCH_NORM_MOMENTUM
    elif weights != "imagenet":
        try:
            load_weights(model, weights)
        except TlpError:
            raise
        except (ValueError, OSError) as error:
            raise TlpError(f"weights file {weights} does not fit {name}: {error}") from error
