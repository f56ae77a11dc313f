"""The compiled augmentation: one affine resampling for every geometric transform, fill modes
as named, the identity at strength 0, and models that compile with the pipeline's defaults."""
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from components import augmentation, configs, model as model_lib
from components.errors import TlpError

HEIGHT, WIDTH = 9, 11  # Centre: row 4, column 5.


def forward(**changes) -> "keras.KerasTensor":
    parameters = dict(flip_x=1.0, flip_y=1.0, angle=0.0, zoom=0.0, shear_x=0.0, shear_y=0.0,
                      shift_x=0.0, shift_y=0.0)
    parameters.update(changes)
    return augmentation.forward_matrices(
        *[keras.ops.convert_to_tensor([value], "float32") for value in parameters.values()])


def marked_image(row: int = 2, column: int = 3) -> np.ndarray:
    image = np.zeros((1, HEIGHT, WIDTH, 3), "float32")
    image[0, row, column] = 255
    return image


def where_the_mark_goes(**changes) -> tuple[int, int]:
    warped = keras.ops.convert_to_numpy(augmentation.warp(marked_image(), forward(**changes)))
    return tuple(int(i) for i in np.unravel_index(warped[0, ..., 0].argmax(), (HEIGHT, WIDTH)))


@pytest.mark.parametrize("changes, row_column", [
    ({}, (2, 3)),
    (dict(shift_x=3.0, shift_y=-1.0), (1, 6)),  # Right 3, up 1.
    (dict(flip_x=-1.0), (2, 7)),  # Mirrored about column 5.
    (dict(flip_y=-1.0), (6, 3)),  # Mirrored about row 4.
    # (x, y) = (-2, -2) from the centre, a quarter turn counter-clockwise: (-2, +2).
    (dict(angle=math.pi / 2), (6, 3)),
    (dict(angle=-math.pi / 2), (2, 7)),
    (dict(zoom=1.0), (3, 4)),  # Zoomed out to half size: halfway to the centre.
    (dict(zoom=-0.5), (0, 1)),  # Zoomed in 2x: twice as far from the centre.
    (dict(shear_x=1.0), (2, 1)),  # x moves by shear_x * y = -2.
    (dict(shear_y=0.5), (1, 3)),  # y moves by shear_y * x = -1.
])
def test_each_transform_moves_a_marked_pixel_where_its_parameters_say(changes, row_column):
    assert where_the_mark_goes(**changes) == row_column


def test_transforms_compose_into_one_resampling():
    # Flip, then a quarter turn, then a shift: (-2, -2) -> (2, -2) -> (-2, -2) -> (-1, -2).
    assert where_the_mark_goes(flip_x=-1.0, angle=math.pi / 2, shift_x=1.0) == (2, 4)


def test_a_whole_pixel_move_keeps_values_exact_and_a_half_pixel_interpolates():
    image = np.random.default_rng(0).uniform(0, 255, (2, HEIGHT, WIDTH, 3)).astype("float32")
    moved = keras.ops.convert_to_numpy(augmentation.warp(image, keras.ops.concatenate(
        [forward(shift_x=1.0)] * 2), "constant"))
    np.testing.assert_allclose(moved[:, :, 1:], image[:, :, :-1], rtol=1e-6)
    np.testing.assert_array_equal(moved[:, :, 0], 0)
    half = keras.ops.convert_to_numpy(augmentation.warp(image[:1], forward(shift_y=0.5)))
    np.testing.assert_allclose(half[0, 1:], (image[0, 1:] + image[0, :-1]) / 2, rtol=1e-5)


@pytest.mark.parametrize("fill_mode, row", [
    # 1 2 3 4 5 moved right by 2: what comes from columns -2 and -1 of the source.
    ("reflect", [2, 1, 1, 2, 3]),  # d c b a | a b c d
    ("wrap", [4, 5, 1, 2, 3]),  # a b c d | a b c d
    ("constant", [0, 0, 1, 2, 3]),  # zeros
    ("nearest", [1, 1, 1, 2, 3]),  # a a a | a b c d
])
def test_fill_modes_behave_as_named(fill_mode, row):
    image = np.arange(1, 6, dtype="float32").reshape(1, 1, 5, 1)
    warped = augmentation.warp(image, forward(shift_x=2.0), fill_mode)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(warped)[0, 0, :, 0], row)


def test_strength_zero_is_the_identity_and_inference_never_augments():
    images = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    still = augmentation.RandomAffine()
    np.testing.assert_allclose(still(images, training=True), images, rtol=1e-6)
    strong = augmentation.RandomAffine("horizontal_and_vertical", 0.5, 0.5, 0.5, 0.5, seed=1)
    np.testing.assert_array_equal(strong(images, training=False), images)
    assert not np.allclose(strong(images, training=True), images)
    assert model_lib.Augmentation.none().layers() == []


def test_random_translation_stays_within_its_strength():
    layer = augmentation.RandomAffine(translation=0.1, seed=3)  # At most 1.1 px of 11.
    layer.build((None, HEIGHT, WIDTH, 3))
    shifts = keras.ops.convert_to_numpy(layer.random_matrices(256))[:, :, 2]
    assert np.abs(shifts[:, 0]).max() <= 0.1 * WIDTH and np.abs(shifts[:, 1]).max() <= 0.9
    assert np.abs(shifts).min() < 0.05 and np.abs(shifts[:, 0]).max() > 0.9


def test_the_dataclass_defaults_are_the_pipelines():
    default = model_lib.Augmentation()
    assert (default.flip, default.rotation, default.zoom, default.translation,
            default.contrast, default.brightness) == (
        configs.AUGMENT_FLIP, configs.AUGMENT_ROTATION, configs.AUGMENT_ZOOM,
        configs.AUGMENT_TRANSLATION, configs.AUGMENT_CONTRAST, configs.AUGMENT_BRIGHTNESS)
    layers = default.layers()
    assert [type(layer).__name__ for layer in layers] == [
        "RandomAffine", "RandomContrast", "RandomBrightness"]
    assert all(layer.supports_jit for layer in layers)


@pytest.mark.parametrize("changes, message", [
    (dict(zoom=1.0), r"augment_zoom=1.0 must be in \[0, 1\)"),
    (dict(rotation=-0.1), r"augment_rotation=-0.1 must be in \[0, 1\]"),
    (dict(flip="sideways"), "augment_flip='sideways'; choose one of none, horizontal"),
    (dict(fill_mode="mirror"), "augment_fill_mode='mirror'; choose one of reflect, wrap"),
])
def test_bad_strengths_fail_with_the_parameter_named(changes, message):
    with pytest.raises(TlpError, match=message):
        model_lib.Augmentation(**changes).layers()


EVERY_AUGMENTATION = model_lib.Augmentation(
    flip="horizontal_and_vertical", rotation=0.2, zoom=0.2, translation=0.2, shear=0.2,
    contrast=0.2, brightness=0.2, color_jitter=0.2, blur=0.5, erasing=0.5, fill_mode="nearest")


@pytest.mark.parametrize("augment", [model_lib.Augmentation(), EVERY_AUGMENTATION],
                         ids=["default", "every"])
def test_a_tensorflow_train_step_runs_under_xla(augment):
    model = model_lib.build_model(3, "MobileNetV2", 32, "none", model_lib.Head(),
                                  augmentation=augment)
    model_lib.compile_model(model, 3, 1e-3, jit_compile=True)
    images = np.random.default_rng(2).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    history = model.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert model.jit_compile is True  # Keras would have turned it off for one layer.
    assert np.isfinite(history.history["loss"][0])


JAX_SCRIPT = """
import numpy as np
from components import model as model_lib
model = model_lib.build_model(3, "MobileNetV2", 32, "none")
model_lib.compile_model(model, 3, 1e-3)
model.fit(np.zeros((4, 32, 32, 3), "float32"), np.arange(4) % 3, epochs=1, verbose=0)
print("jit_compile", model.jit_compile)
"""


def test_the_default_model_is_jitted_on_jax():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "jit_compile True"
