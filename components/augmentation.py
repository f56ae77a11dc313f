"""Geometric augmentation that compiles: flip, rotation, zoom, shear and translation composed
into one affine matrix per image and applied with one bilinear resampling, in keras.ops alone.

Keras's own RandomRotation, RandomZoom, RandomTranslation and RandomShear set
`supports_jit=False`, which turns compilation off for the whole model (no XLA on TensorFlow,
no jax.jit on JAX), and each resamples the image again. On TensorFlow they use
ImageProjectiveTransformV3, which has no XLA kernel; the gathers here have one.
"""
import math

import keras
from keras import ops

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("reflect", "wrap", "constant", "nearest")


def forward_matrices(flip_x, flip_y, angle, zoom, shear_x, shear_y, shift_x, shift_y):
    """Per-image (batch, 2, 3) matrices that move content: a pixel at p (x right, y down,
    relative to the image centre) goes to A @ p + shift. Arguments are (batch,) tensors:
    flip_x/flip_y are 1 or -1; angle in radians, counter-clockwise as seen; zoom z scales
    content by 1 / (1 + z) (z > 0 zooms out); shear_x moves x by shear_x * y (and shear_y
    moves y by shear_y * x); shift in pixels. Applied in the order flip, shear, zoom,
    rotation, shift."""
    cos, sin, scale = ops.cos(angle), ops.sin(angle), 1.0 / (1.0 + zoom)
    # R @ diag(scale) @ [[1, shear_x], [shear_y, 1]] @ diag(flip_x, flip_y)
    a = scale * (cos + sin * shear_y) * flip_x
    b = scale * (cos * shear_x + sin) * flip_y
    c = scale * (-sin + cos * shear_y) * flip_x
    d = scale * (-sin * shear_x + cos) * flip_y
    return ops.reshape(ops.stack([a, b, shift_x, c, d, shift_y], axis=-1), (-1, 2, 3))


def sampling_matrices(forward):
    """Inverts forward_matrices' (batch, 2, 3) maps: output position -> where to sample."""
    a, b, tx = forward[:, 0, 0], forward[:, 0, 1], forward[:, 0, 2]
    c, d, ty = forward[:, 1, 0], forward[:, 1, 1], forward[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    rows = [ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty)]
    return ops.reshape(ops.stack(rows, axis=-1), (-1, 2, 3))


def _fill_index(index, size: int, fill_mode: str):
    """Integer sample positions outside [0, size) mapped as fill_mode says (scipy.ndimage's
    meanings), and a 0/1 weight that is 0 where 'constant' fills with zeros."""
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a
        period = ops.mod(index, 2 * size)
        return ops.where(period < size, period, 2 * size - 1 - period), 1.0
    if fill_mode == "wrap":  # a b c d | a b c d | a b c d
        return ops.mod(index, size), 1.0
    clipped = ops.clip(index, 0, size - 1)
    if fill_mode == "nearest":  # a a a | a b c d | d d d
        return clipped, 1.0
    return clipped, ops.cast(ops.logical_and(index >= 0, index < size), "float32")


def warp(images, forward, fill_mode: str = "reflect"):
    """Resamples (batch, height, width, channels) float images bilinearly so that content
    moves as the forward matrices (forward_matrices) say; fill_mode fills what comes from
    outside the image (constant: zeros)."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode={fill_mode!r}; choose one of {', '.join(FILL_MODES)}.")
    shape = ops.shape(images)
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"),
                          ops.arange(width, dtype="float32"), indexing="ij")
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    grid = ops.stack([ops.reshape(xs, (-1,)) - centre_x, ops.reshape(ys, (-1,)) - centre_y,
                      ops.ones((height * width,))])
    source = ops.matmul(sampling_matrices(ops.cast(forward, "float32")), grid)
    x, y = source[:, 0] + centre_x, source[:, 1] + centre_y  # (batch, height * width)
    x0, y0 = ops.floor(x), ops.floor(y)
    fraction_x, fraction_y = x - x0, y - y0
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    pixels = ops.reshape(images, (-1, channels))
    first = ops.expand_dims(ops.arange(shape[0], dtype="int32") * (height * width), 1)
    result = 0.0
    for step_y, weight_y in ((0, 1 - fraction_y), (1, fraction_y)):
        row, inside_y = _fill_index(y0 + step_y, height, fill_mode)
        for step_x, weight_x in ((0, 1 - fraction_x), (1, fraction_x)):
            column, inside_x = _fill_index(x0 + step_x, width, fill_mode)
            weight = ops.cast(weight_y * weight_x * inside_y * inside_x, images.dtype)
            sampled = ops.take(pixels, ops.reshape(first + row * width + column, (-1,)), axis=0)
            result = result + ops.reshape(sampled, shape) * ops.reshape(
                weight, (-1, height, width, 1))
    return result


@keras.saving.register_keras_serializable(package="tlp")
class RandomAffine(keras.layers.Layer):
    """Random flip, rotation, zoom, shear and translation in one resampling, active only in
    training. Strengths as Keras's layers of those names: rotation a fraction of a full turn,
    zoom and translation fractions of the image size, shear the fraction of the image a
    pixel moves across (each drawn uniformly in [-strength, strength])."""

    def __init__(self, flip: str = "none", rotation: float = 0.0, zoom: float = 0.0,
                 translation: float = 0.0, shear: float = 0.0, fill_mode: str = "reflect",
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if flip not in FLIP_MODES:
            raise ValueError(f"flip={flip!r}; choose one of {', '.join(FLIP_MODES)}.")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode={fill_mode!r}; choose one of {', '.join(FILL_MODES)}.")
        self.flip, self.rotation, self.zoom = flip, rotation, zoom
        self.translation, self.shear, self.fill_mode, self.seed = (
            translation, shear, fill_mode, seed)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, strength: float):
        if not strength:
            return ops.zeros((batch,))
        return keras.random.uniform((batch,), -strength, strength, seed=self.seed_generator)

    def _flip(self, batch, wanted: bool):
        if not wanted:
            return ops.ones((batch,))
        coin = keras.random.uniform((batch,), seed=self.seed_generator)
        return ops.where(coin < 0.5, -1.0, 1.0)

    def random_matrices(self, batch):
        """Forward matrices (forward_matrices) drawn for `batch` images."""
        height, width = self._image_size
        return forward_matrices(
            self._flip(batch, "horizontal" in self.flip), self._flip(batch, "vertical" in self.flip),
            self._uniform(batch, self.rotation * 2 * math.pi), self._uniform(batch, self.zoom),
            self._uniform(batch, self.shear), self._uniform(batch, self.shear),
            self._uniform(batch, self.translation) * width,
            self._uniform(batch, self.translation) * height)

    def build(self, input_shape):
        self._image_size = (input_shape[1], input_shape[2])

    def call(self, images, training=None):
        if not training:
            return images
        return warp(images, self.random_matrices(ops.shape(images)[0]), self.fill_mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "flip": self.flip, "rotation": self.rotation,
                "zoom": self.zoom, "translation": self.translation, "shear": self.shear,
                "fill_mode": self.fill_mode, "seed": self.seed}
