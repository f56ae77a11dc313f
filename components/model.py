"""The classifier: augmentation -> backbone preprocessing -> frozen backbone -> new head."""
import re
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from components import (accelerators, augmentation as augment_lib, backbones, configs,
                        hub_backbones)
from components.errors import TlpError

POOLING_MODES = ("avg", "flatten")


@dataclass(frozen=True)
class Augmentation:
    """Strengths of the random augmentations (0: off); the defaults are the pipeline's.
    Geometric ones are fractions of the image size or of a full turn, and compose into one
    resampling (augment_lib.RandomAffine); colour ones are factors; blur and erasing
    probabilities. Colour jitter, blur and erasing are off by default: colour, fine detail
    or a patch can be what tells classes apart. Every layer compiles (XLA, jax.jit)."""
    flip: str = configs.AUGMENT_FLIP
    rotation: float = configs.AUGMENT_ROTATION
    zoom: float = configs.AUGMENT_ZOOM
    translation: float = configs.AUGMENT_TRANSLATION
    shear: float = configs.AUGMENT_SHEAR
    contrast: float = configs.AUGMENT_CONTRAST
    brightness: float = configs.AUGMENT_BRIGHTNESS
    color_jitter: float = configs.AUGMENT_COLOR_JITTER
    blur: float = configs.AUGMENT_BLUR
    erasing: float = configs.AUGMENT_ERASING
    fill_mode: str = configs.AUGMENT_FILL_MODE

    @classmethod
    def from_parameters(cls, parameters: dict) -> "Augmentation":
        """From pipeline parameters, augment_<field> each."""
        return cls(**{name: parameters[f"augment_{name}"]
                      for name in cls.__dataclass_fields__})

    @classmethod
    def none(cls) -> "Augmentation":
        """Every augmentation off."""
        return cls(flip="none", **{name: 0.0 for name in cls._STRENGTH_LIMITS})

    # Each strength's allowed range [0, limit] ([0, limit) where the limit is excluded).
    _STRENGTH_LIMITS = {"rotation": (1.0, True), "zoom": (1.0, False),
                        "translation": (1.0, True), "shear": (1.0, False),
                        "contrast": (1.0, True), "brightness": (1.0, True),
                        "color_jitter": (1.0, True), "blur": (1.0, True),
                        "erasing": (1.0, True)}

    def validate(self) -> None:
        if self.flip not in augment_lib.FLIP_MODES:
            raise TlpError(f"augment_flip={self.flip!r}; choose one of "
                           f"{', '.join(augment_lib.FLIP_MODES)}.")
        if self.fill_mode not in augment_lib.FILL_MODES:
            raise TlpError(f"augment_fill_mode={self.fill_mode!r}; choose one of "
                           f"{', '.join(augment_lib.FILL_MODES)}.")
        for name, (limit, inclusive) in self._STRENGTH_LIMITS.items():
            value = getattr(self, name)
            if not (0 <= value <= limit if inclusive else 0 <= value < limit):
                raise TlpError(f"augment_{name}={value} must be in [0, {limit:g}"
                               f"{']' if inclusive else ')'} (0: off).")

    def layers(self) -> list[keras.layers.Layer]:
        """The augmentation layers; they are active only when training."""
        self.validate()
        pixels = {"value_range": (0, 255)}
        geometric = self.flip != "none" or any(
            (self.rotation, self.zoom, self.translation, self.shear))
        candidates = [
            (geometric, lambda: augment_lib.RandomAffine(
                self.flip, self.rotation, self.zoom, self.translation, self.shear,
                self.fill_mode)),
            (self.contrast, lambda: keras.layers.RandomContrast(self.contrast, **pixels)),
            (self.brightness, lambda: keras.layers.RandomBrightness(self.brightness, **pixels)),
            (self.color_jitter, lambda: keras.layers.RandomColorJitter(
                saturation_factor=self.color_jitter, hue_factor=self.color_jitter, **pixels)),
            (self.blur, lambda: keras.layers.RandomGaussianBlur(self.blur, **pixels)),
            (self.erasing, lambda: keras.layers.RandomErasing(self.erasing, **pixels)),
        ]
        return [make() for wanted, make in candidates if wanted]


@dataclass(frozen=True)
class Head:
    """The new layers on top of the backbone."""
    pooling: str = "avg"
    dense_units: tuple[int, ...] = ()  # Hidden dense layers (ReLU), each followed by dropout.
    batch_norm: bool = False
    dropout: float = 0.2
    weight_decay: float = 0.0  # L2 factor on the head's dense kernels.

    @classmethod
    def from_parameters(cls, parameters: dict) -> "Head":
        """From pipeline parameters (pooling, head_dense_units, head_batch_norm, dropout,
        weight_decay)."""
        return cls(parameters["pooling"], cls.parse_units(parameters["head_dense_units"]),
                   parameters["head_batch_norm"], parameters["dropout"],
                   parameters["weight_decay"])

    @staticmethod
    def parse_units(text: str) -> tuple[int, ...]:
        """'256,128' -> (256, 128); '' -> ()."""
        try:
            units = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
        except ValueError:
            units = (0,)
        if any(u <= 0 for u in units):
            raise TlpError(f"head_dense_units={text!r} must be positive integers separated by "
                           "commas, e.g. 256,128 (or empty for none).")
        return units

    def validate(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise TlpError(f"pooling={self.pooling!r}; choose one of {', '.join(POOLING_MODES)}.")
        if not 0 <= self.dropout < 1:
            raise TlpError(f"dropout={self.dropout} must be in [0, 1).")
        if self.weight_decay < 0:
            raise TlpError(f"weight_decay={self.weight_decay} must be >= 0.")

    def build(self, features, num_classes: int,
              pooling_layer: keras.layers.Layer | None = None):
        """pooling_layer: the backbone's own (KerasHub backbones: hub_backbones.pooling_layer);
        None: global average pooling or Flatten, as `pooling` says."""
        regularizer = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        if pooling_layer is None:
            pooling_layer = (keras.layers.GlobalAveragePooling2D() if self.pooling == "avg"
                             else keras.layers.Flatten())
        x = pooling_layer(features)
        if self.batch_norm:
            x = keras.layers.BatchNormalization()(x)
        for units in self.dense_units:
            x = keras.layers.Dense(units, activation="relu", kernel_regularizer=regularizer)(x)
            x = keras.layers.Dropout(self.dropout)(x)
        x = keras.layers.Dropout(self.dropout)(x)
        units, activation = (1, "sigmoid") if is_binary(num_classes) else (num_classes, "softmax")
        # float32 even under mixed precision: probabilities need the range and resolution.
        return keras.layers.Dense(units, activation=activation, kernel_regularizer=regularizer,
                                  dtype="float32", name="classifier")(x)


def is_binary(num_classes: int) -> bool:
    return num_classes == 2


@keras.saving.register_keras_serializable(package="tlp")
class SparseCategoricalCrossentropyWithSmoothing(keras.losses.Loss):
    """Keras's sparse categorical cross-entropy has no label smoothing; this one does."""

    def __init__(self, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        return keras.losses.categorical_crossentropy(
            keras.ops.one_hot(labels, keras.ops.shape(y_pred)[-1]), y_pred,
            label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def loss_and_metric(num_classes: int, label_smoothing: float = 0.0,
                    ) -> tuple[keras.losses.Loss, keras.metrics.Metric]:
    """2 classes: one sigmoid unit with binary cross-entropy; more: softmax with sparse
    categorical cross-entropy."""
    if is_binary(num_classes):
        return (keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                keras.metrics.BinaryAccuracy(name="accuracy"))
    loss = (SparseCategoricalCrossentropyWithSmoothing(label_smoothing) if label_smoothing
            else keras.losses.SparseCategoricalCrossentropy())
    return loss, keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def build_model(num_classes: int, backbone: str, image_size: int, weights: str,
                head: Head = Head(), augmentation: Augmentation = Augmentation()) -> keras.Model:
    """Inputs are float images in [0, 255] of shape (image_size, image_size, 3); image_size
    0: the backbone's native size."""
    head.validate()
    image_size = backbones.resolve_image_size(backbone, image_size)
    if hub_backbones.is_hub(backbone):
        base, preprocessing, pooling = hub_backbones.build(backbone, image_size, weights,
                                                           head.pooling)
    else:
        base = backbones.build_backbone(backbone, image_size, weights)
        preprocessing = backbones.BackbonePreprocessing(backbone, name="preprocessing")
        pooling = None
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    augmentation_layers = augmentation.layers()
    x = (keras.Sequential(augmentation_layers, name="augmentation")(inputs)
         if augmentation_layers else inputs)
    outputs = head.build(call_backbone(base, preprocessing(x)), num_classes, pooling)
    return keras.Model(inputs, outputs, name=f"{model_name(backbone)}_classifier")


def model_name(backbone: str) -> str:
    """The backbone's name as part of the model's ('hub:/data/presets/vit-tiny' ->
    'hub_vit-tiny', 'hub:kaggle://keras/vit/keras/vit_base_patch16_224_imagenet/4' ->
    'hub_vit_base_patch16_224_imagenet')."""
    if not hub_backbones.is_hub(backbone):
        return backbone
    parts = [part for part in re.split(r"[/:]", backbone[len(hub_backbones.PREFIX):])
             if part and not part.isdigit()]
    return "hub_" + (parts[-1] if parts else "preset")


OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,  # Its default decoupled weight decay, 0.004.
    "rmsprop": keras.optimizers.RMSprop,
    "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
}


def without_augmentation(model: keras.Model) -> keras.Model:
    """The same model, sharing its weights, minus the augmentation block: what to serve."""
    if "augmentation" not in [layer.name for layer in model.layers]:
        return model
    inputs = keras.Input(model.input.shape[1:], name="image")
    x = inputs
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer) and layer.name != "augmentation":
            x = (call_backbone(layer, x) if layer.name == backbones.BACKBONE_LAYER_NAME
                 else layer(x))
    return keras.Model(inputs, x, name=model.name)


def compile_model(model: keras.Model, num_classes: int, learning_rate,
                  optimizer: str = "adam", label_smoothing: float = 0.0,
                  steps_per_execution: int = 1, jit_compile: bool | str = "auto") -> None:
    """learning_rate: a float or a keras.optimizers.schedules schedule. With 'auto' Keras
    compiles the steps (XLA on TensorFlow, jax.jit on JAX) where every layer allows it,
    except with TensorFlow on a CPU-only machine or under tf.distribute. Prints what it
    chose."""
    if optimizer not in OPTIMIZERS:
        raise TlpError(f"optimizer={optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
    loss, metric = loss_and_metric(num_classes, label_smoothing)
    model.compile(optimizer=OPTIMIZERS[optimizer](learning_rate=learning_rate), loss=loss,
                  metrics=[metric], steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    print(f"{model.name}: {describe_compilation(model)}", flush=True)


def describe_compilation(model: keras.Model) -> str:
    """Whether the compiled model's steps run compiled, and if not, which layers stop it."""
    compiler = "jax.jit" if keras.backend.backend() == "jax" else "XLA"
    if model.jit_compile:
        return f"train step compiled ({compiler})"
    blocking = sorted({type(layer).__name__ for layer in model._flatten_layers()
                       if not layer.supports_jit})
    reason = (f"layers that do not support it: {', '.join(blocking)}" if blocking
              else "Keras turns XLA off for TensorFlow on CPU only and under tf.distribute")
    return f"train step NOT compiled ({compiler}): {reason}"


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(backbones.BACKBONE_LAYER_NAME)


def call_backbone(base: keras.Model, images, **kwargs):
    """base(images), as the input structure it was built with (a dict for several KerasHub
    image towers: {'images': ...})."""
    if isinstance(base.input, dict):
        [name] = base.input
        images = {name: images}
    return base(images, **kwargs)


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The head: the layers after the backbone, in order (pooling first, "classifier" last;
    build_model chains them one after another)."""
    names = [layer.name for layer in model.layers]
    return model.layers[names.index(backbones.BACKBONE_LAYER_NAME) + 1:]


SIMILARITIES = ("similar", "different")
# Train images per class from which fine_tune_layers=auto treats a dataset as large.
LARGE_DATASET_PER_CLASS = 1000
# fine_tune_layers=auto, by (large dataset, similar to ImageNet): the four quadrants of the
# usual transfer-learning advice.
AUTO_UNFREEZE = {
    (False, True): "0",  # Small and similar: the new head alone.
    (False, False): "0.3",  # Small and different: the top of the backbone too.
    (True, True): "0.5",  # Large and similar: the top half.
    (True, False): "all",  # Large and different: every layer.
}


def auto_unfreeze(train_counts: list[int], similarity: str) -> str:
    """The fine_tune_layers spec that fine_tune_layers=auto stands for."""
    if similarity not in SIMILARITIES:
        raise TlpError(f"domain_similarity={similarity!r}; choose one of "
                       f"{', '.join(SIMILARITIES)}.")
    large = min(train_counts) >= LARGE_DATASET_PER_CLASS
    return AUTO_UNFREEZE[large, similarity == "similar"]


def parse_unfreeze(spec: str) -> int | float | str:
    """'30' -> 30 (top layers), '0.25' -> 0.25 (that fraction of the layers, from the top),
    'all' -> 1.0, anything else -> a layer name (that layer and every layer above it)."""
    if spec == "all":
        return 1.0
    try:
        value = float(spec)
    except ValueError:
        return spec
    if value == 0 or value >= 1 and value.is_integer():
        return int(value)
    if 0 < value < 1:
        return value
    raise TlpError(f"fine_tune_layers={spec!r}: give a layer count (0 or more), a fraction "
                   "between 0 and 1, all, auto, or a layer name.")


def layers_to_unfreeze(base: keras.Model, spec: str) -> int:
    """How many top backbone layers `spec` (see parse_unfreeze) means; for a KerasHub
    transformer, how many transformer blocks (hub_backbones.fine_tune_units)."""
    hub = hub_backbones.is_hub_model(base)
    units = hub_backbones.fine_tune_units(base) if hub else base.layers
    value = parse_unfreeze(spec)
    if isinstance(value, float):
        return round(value * len(units))
    if isinstance(value, int):
        return value
    names = [unit.name for unit in units]
    if value not in names:
        what = hub_backbones.fine_tune_unit(base)[:-1] if hub else "layer"
        shown = [unit.name for unit in units if not isinstance(unit, keras.layers.InputLayer)]
        raise TlpError(f"fine_tune_layers={spec!r} is neither a number nor a {what} of the "
                       f"backbone (its {what}s run from {shown[0]!r} to {shown[-1]!r}).")
    return len(names) - names.index(value)


def unfreeze_top_layers(model: keras.Model, num_layers: int) -> int:
    """Makes the top num_layers backbone layers trainable (all, if it has fewer) and freezes
    the rest. BatchNormalization layers stay frozen, which in Keras 3 keeps them in inference
    mode (Keras 3 overrides `base(x, training=False)` during fit: keras-team/keras#20285).
    Returns how many backbone layers are trainable. Recompile afterwards."""
    if num_layers < 0:
        raise TlpError(f"fine_tune_layers={num_layers} must be >= 0.")
    base = backbone_of(model)
    if hub_backbones.is_hub_model(base):  # Transformers count blocks.
        return hub_backbones.unfreeze_top_units(base, num_layers)
    base.trainable = num_layers > 0
    split = max(len(base.layers) - num_layers, 0)
    for position, layer in enumerate(base.layers):
        layer.trainable = (position >= split
                           and not isinstance(layer, keras.layers.BatchNormalization))
    return sum(layer.trainable for layer in base.layers)


def describe_unfrozen(base: keras.Model, trainable: int) -> str:
    """'12 of 155 backbone layers trainable', or for a KerasHub transformer '2 of 12
    transformer blocks trainable'."""
    if hub_backbones.is_hub_model(base):
        return (f"{trainable} of {len(hub_backbones.fine_tune_units(base))} "
                f"{hub_backbones.fine_tune_unit(base)} trainable")
    return f"{trainable} of {len(base.layers)} backbone layers trainable"


def probabilities(outputs) -> "keras.KerasTensor":
    """Per-class probabilities: a sigmoid unit p becomes [1 - p, p]."""
    if outputs.shape[-1] == 1:
        return keras.ops.concatenate([1 - outputs, outputs], axis=-1)
    return outputs


def predict_batches(model: keras.Model, batches: Sequence,
                    batch_size: int | None = None) -> np.ndarray:
    """The model's outputs over `batches` (each one model input), concatenated. Batch by
    batch through predict_on_batch: the same compiled function as predict, without the idle
    time Keras's predict loop showed on TensorFlow (measured on CPU: 20.5 s for 15.5 s of
    compute over 12 batches of MobileNetV2, the same 15.5 s batch by batch). A shorter batch
    (a split's last) is padded to batch_size (default: the first batch's) with copies of its
    last row, whose outputs are dropped: a batch of a new size would trace the function again
    (on CPU, MobileNetV2 at 160 px: 1 s, against 0.04 s for predicting 28 rows of padding).
    Under a TensorFlow MirroredStrategy predict_on_batch would run every batch whole on each
    replica, so there predict splits them."""
    if keras.backend.backend() == "tensorflow" and accelerators.replicas_in_use() > 1:
        return model.predict(((batch,) for batch in batches), steps=len(batches), verbose=0)
    size = batch_size or (_rows(batches[0]) if batches else 0)
    return np.concatenate([
        model.predict_on_batch(keras.tree.map_structure(lambda x: _pad_rows(x, size), batch))
        [:_rows(batch)] for batch in batches])


def _rows(batch) -> int:
    return len(keras.tree.flatten(batch)[0])


def _pad_rows(rows, size: int) -> np.ndarray:
    rows = np.asarray(rows)
    missing = size - len(rows)
    return np.concatenate([rows, np.repeat(rows[-1:], missing, axis=0)]) if missing > 0 else rows
