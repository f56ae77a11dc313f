"""The classifier: augmentation -> backbone preprocessing -> frozen backbone -> new head."""
from dataclasses import dataclass

import keras

from components import backbones
from components.errors import TlpError

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
POOLING_MODES = ("avg", "flatten")


@dataclass(frozen=True)
class Augmentation:
    flip: str = "horizontal"
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0

    def layers(self) -> list[keras.layers.Layer]:
        """Keras preprocessing layers; they are active only when training."""
        if self.flip not in FLIP_MODES:
            raise TlpError(f"augment_flip={self.flip!r}; choose one of {', '.join(FLIP_MODES)}.")
        layers = []
        if self.flip != "none":
            layers.append(keras.layers.RandomFlip(self.flip))
        if self.rotation:
            layers.append(keras.layers.RandomRotation(self.rotation))
        if self.zoom:
            layers.append(keras.layers.RandomZoom(self.zoom))
        if self.translation:
            layers.append(keras.layers.RandomTranslation(self.translation, self.translation))
        if self.contrast:
            layers.append(keras.layers.RandomContrast(self.contrast, value_range=(0, 255)))
        return layers


def is_binary(num_classes: int) -> bool:
    return num_classes == 2


def loss_and_metric(num_classes: int) -> tuple[keras.losses.Loss, keras.metrics.Metric]:
    """2 classes: one sigmoid unit with binary cross-entropy; more: softmax with sparse
    categorical cross-entropy."""
    if is_binary(num_classes):
        return keras.losses.BinaryCrossentropy(), keras.metrics.BinaryAccuracy(name="accuracy")
    return (keras.losses.SparseCategoricalCrossentropy(),
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"))


def build_model(num_classes: int, backbone: str, image_size: int, weights: str,
                pooling: str = "avg", dropout: float = 0.2,
                augmentation: Augmentation = Augmentation()) -> keras.Model:
    """Inputs are float images in [0, 255] of shape (image_size, image_size, 3)."""
    if pooling not in POOLING_MODES:
        raise TlpError(f"pooling={pooling!r}; choose one of {', '.join(POOLING_MODES)}.")
    if not 0 <= dropout < 1:
        raise TlpError(f"dropout={dropout} must be in [0, 1).")
    base = backbones.build_backbone(backbone, image_size, weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    augmentation_layers = augmentation.layers()
    x = (keras.Sequential(augmentation_layers, name="augmentation")(inputs)
         if augmentation_layers else inputs)
    x = backbones.BackbonePreprocessing(backbone, name="preprocessing")(x)
    x = base(x)
    x = (keras.layers.GlobalAveragePooling2D() if pooling == "avg"
         else keras.layers.Flatten())(x)
    x = keras.layers.Dropout(dropout)(x)
    if is_binary(num_classes):
        outputs = keras.layers.Dense(1, activation="sigmoid", name="classifier")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"{backbone}_classifier")


def compile_model(model: keras.Model, num_classes: int, learning_rate: float) -> None:
    loss, metric = loss_and_metric(num_classes)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=[metric])


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(backbones.BACKBONE_LAYER_NAME)


def unfreeze_top_layers(model: keras.Model, num_layers: int) -> int:
    """Makes the top num_layers backbone layers trainable (all, if it has fewer) and freezes
    the rest. BatchNormalization layers stay frozen, which in Keras 3 keeps them in inference
    mode (Keras 3 overrides `base(x, training=False)` during fit: keras-team/keras#20285).
    Returns how many backbone layers are trainable. Recompile afterwards."""
    if num_layers < 0:
        raise TlpError(f"fine_tune_layers={num_layers} must be >= 0.")
    base = backbone_of(model)
    base.trainable = num_layers > 0
    split = max(len(base.layers) - num_layers, 0)
    for position, layer in enumerate(base.layers):
        layer.trainable = (position >= split
                           and not isinstance(layer, keras.layers.BatchNormalization))
    return sum(layer.trainable for layer in base.layers)


def probabilities(outputs) -> "keras.KerasTensor":
    """Per-class probabilities: a sigmoid unit p becomes [1 - p, p]."""
    if outputs.shape[-1] == 1:
        return keras.ops.concatenate([1 - outputs, outputs], axis=-1)
    return outputs
