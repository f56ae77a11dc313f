import keras
import numpy as np
import pytest

from components import backbones, model as model_lib
from components.errors import TlpError


@pytest.mark.parametrize("num_classes, units, activation, loss", [
    (2, 1, "sigmoid", keras.losses.BinaryCrossentropy),
    (3, 3, "softmax", keras.losses.SparseCategoricalCrossentropy),
    (10, 10, "softmax", keras.losses.SparseCategoricalCrossentropy),
])
def test_head_and_loss_follow_the_class_count(num_classes, units, activation, loss):
    model = model_lib.build_model(num_classes, "MobileNetV2", 32, "none")
    classifier = model.get_layer("classifier")
    assert classifier.units == units
    assert classifier.activation.__name__ == activation
    model_lib.compile_model(model, num_classes, 1e-3)
    assert isinstance(model.loss, loss)
    probs = keras.ops.convert_to_numpy(model_lib.probabilities(
        model(np.zeros((2, 32, 32, 3), "float32"))))
    assert probs.shape == (2, max(num_classes, 2))
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_freeze_then_unfreeze_top_layers():
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    base = model_lib.backbone_of(model)
    assert not any(layer.trainable for layer in base.layers)
    assert len(model.trainable_weights) == 2  # The classifier's kernel and bias.

    trainable = model_lib.unfreeze_top_layers(model, 20)
    top = base.layers[-20:]
    expected = [layer for layer in top if not isinstance(layer, keras.layers.BatchNormalization)]
    assert trainable == len(expected) and 0 < trainable < 20
    assert all(layer.trainable for layer in expected)
    assert not any(layer.trainable for layer in base.layers[:-20])
    assert model_lib.unfreeze_top_layers(model, 0) == 0
    everything = model_lib.unfreeze_top_layers(model, 10_000)
    assert everything == sum(not isinstance(layer, keras.layers.BatchNormalization)
                             for layer in base.layers)


def test_batchnorm_stays_in_inference_mode_after_unfreezing():
    model = model_lib.build_model(3, "MobileNetV2", 32, "none", model_lib.Head(dropout=0.0),
                                  augmentation=model_lib.Augmentation.none())
    model_lib.unfreeze_top_layers(model, 1000)
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), atol=1e-6)


EVERY_AUGMENTATION = model_lib.Augmentation(
    flip="horizontal_and_vertical", rotation=0.2, zoom=0.2, translation=0.2, shear=0.2,
    contrast=0.2, brightness=0.2, color_jitter=0.2, blur=0.5, erasing=0.5, fill_mode="nearest")


def test_each_augmentation_is_built_and_active_only_in_training():
    model = model_lib.build_model(3, "MobileNetV2", 32, "none",
                                  augmentation=EVERY_AUGMENTATION)
    augmentation = model.get_layer("augmentation")
    assert [type(layer).__name__ for layer in augmentation.layers] == [
        "RandomAffine", "RandomContrast", "RandomBrightness", "RandomColorJitter",
        "RandomGaussianBlur", "RandomErasing"]
    assert augmentation.layers[0].fill_mode == "nearest"
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(augmentation(x, training=False), x)
    augmented = keras.ops.convert_to_numpy(augmentation(x, training=True))
    assert not np.allclose(augmented, x)
    assert augmented.min() >= 0 and augmented.max() <= 255


def test_the_model_to_serve_has_no_augmentation_and_the_same_outputs():
    model = model_lib.build_model(3, "MobileNetV2", 32, "none",
                                  augmentation=EVERY_AUGMENTATION)
    served = model_lib.without_augmentation(model)
    assert "augmentation" not in [layer.name for layer in served.layers]
    assert len(served.weights) == len(model.weights)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(served(x), model(x, training=False), atol=1e-6)


def test_weights_file_is_loaded(tmp_path):
    source = backbones.build_backbone("MobileNetV2", 32, "none")
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(str(path))
    loaded = backbones.build_backbone("MobileNetV2", 32, str(path))
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bucket_fixture", ["gcs_bucket", "s3_bucket"])
def test_weights_file_is_loaded_from_a_bucket(request, bucket_fixture, tmp_path):
    from components import storage

    source = backbones.build_backbone("MobileNetV2", 32, "none")
    source.save_weights(str(tmp_path / "backbone.weights.h5"))
    uri = request.getfixturevalue(bucket_fixture) + "/weights/backbone.weights.h5"
    storage.upload_file(tmp_path / "backbone.weights.h5", uri)
    loaded = backbones.build_backbone("MobileNetV2", 32, uri)
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TlpError, match=f"weights file {uri}x does not exist"):
        backbones.build_backbone("MobileNetV2", 32, uri + "x")


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "ResNet9000"}, "unknown backbone 'ResNet9000'"),
    ({"image_size": 16}, "image_size=16 is too small for MobileNetV2"),
    ({"weights": "/no/such.weights.h5"}, "weights file /no/such.weights.h5 does not exist"),
    ({"head": model_lib.Head(pooling="max")}, "pooling='max'"),
    ({"head": model_lib.Head(dropout=1.0)}, r"dropout=1.0 must be in \[0, 1\)"),
])
def test_bad_model_options_have_clear_errors(kwargs, message):
    options = {"num_classes": 3, "backbone": "MobileNetV2", "image_size": 32,
               "weights": "none", **kwargs}
    with pytest.raises(TlpError, match=message):
        model_lib.build_model(**options)


def test_head_options_build_the_layers_asked_for():
    head = model_lib.Head("flatten", model_lib.Head.parse_units("16, 8"), batch_norm=True,
                          dropout=0.3, weight_decay=1e-3)
    model = model_lib.build_model(3, "MobileNetV2", 32, "none", head)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[-8:] == ["Flatten", "BatchNormalization", "Dense", "Dropout", "Dense",
                          "Dropout", "Dropout", "Dense"]
    assert [layer.units for layer in model.layers if type(layer).__name__ == "Dense"] == \
        [16, 8, 3]
    model(np.zeros((1, 32, 32, 3), "float32"))
    assert len(model.losses) == 3  # One L2 term per dense kernel.


@pytest.mark.parametrize("text", ["16,-2", "a,b"])
def test_bad_dense_units_are_rejected(text):
    with pytest.raises(TlpError, match="head_dense_units"):
        model_lib.Head.parse_units(text)


@pytest.mark.parametrize("spec, expected", [("0", 0), ("5", 5), ("0.25", None),
                                            ("all", 19), ("block5_conv1", 4)])
def test_unfreeze_by_count_fraction_or_layer_name(spec, expected):
    base = backbones.build_backbone("VGG16", 32, "none")
    expected = round(0.25 * len(base.layers)) if expected is None else expected
    assert model_lib.layers_to_unfreeze(base, spec) == expected


@pytest.mark.parametrize("spec, message", [("block9_conv1", "neither a number nor a layer"),
                                           ("-1", "a layer count"), ("2.5", "a layer count")])
def test_bad_unfreeze_specs_are_rejected(spec, message):
    base = backbones.build_backbone("VGG16", 32, "none")
    with pytest.raises(TlpError, match=message):
        model_lib.layers_to_unfreeze(base, spec)


@pytest.mark.parametrize("optimizer", list(model_lib.OPTIMIZERS))
def test_every_optimizer_trains_a_step(optimizer):
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    model_lib.compile_model(model, 3, 1e-3, optimizer, label_smoothing=0.1)
    bias = model.get_layer("classifier").bias.numpy().copy()
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.train_on_batch(images, np.array([0, 1, 2, 1]))
    # The bias: an untrained backbone's features are ~0 at this size, so its kernel barely moves.
    assert np.abs(model.get_layer("classifier").bias.numpy() - bias).max() > 1e-4


def test_label_smoothing_matches_the_one_hot_loss_and_survives_saving(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 2])
    smoothed = model_lib.SparseCategoricalCrossentropyWithSmoothing(0.3)(labels, probs)
    expected = keras.losses.CategoricalCrossentropy(label_smoothing=0.3)(np.eye(3)[labels],
                                                                         probs)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
    model = model_lib.build_model(3, "MobileNetV2", 32, "none")
    model_lib.compile_model(model, 3, 1e-3, label_smoothing=0.3)
    model.save(tmp_path / "m.keras")
    assert keras.models.load_model(tmp_path / "m.keras").loss.label_smoothing == 0.3


def test_weights_from_a_whole_model_are_copied_by_name(tmp_path, capsys):
    source = model_lib.build_model(5, "MobileNetV2", 32, "none")
    source.save(tmp_path / "whole.keras")
    loaded = backbones.build_backbone("MobileNetV2", 32, str(tmp_path / "whole.keras"))
    for a, b in zip(model_lib.backbone_of(source).weights, loaded.weights):
        np.testing.assert_array_equal(a, b)
    assert "copied 104 of 104 weighted backbone layers" in capsys.readouterr().out
    unrelated = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="other")])
    unrelated.save(tmp_path / "unrelated.keras")
    with pytest.raises(TlpError, match="no layer of .*unrelated.keras matches"):
        backbones.build_backbone("MobileNetV2", 32, str(tmp_path / "unrelated.keras"))


@pytest.mark.parametrize("per_class, similarity, expected", [
    (50, "similar", "0"), (50, "different", "0.3"),
    (1000, "similar", "0.5"), (5000, "different", "all")])
def test_auto_unfreeze_follows_the_four_quadrants(per_class, similarity, expected):
    assert model_lib.auto_unfreeze([per_class, per_class * 2], similarity) == expected


def test_auto_unfreeze_needs_a_known_similarity():
    with pytest.raises(TlpError, match="domain_similarity='close'"):
        model_lib.auto_unfreeze([10, 10], "close")


class _CountsTraces(keras.layers.Layer):
    """Doubles its input; counts its Python calls, which a compiled function makes only when
    it traces."""

    traces = 0

    def call(self, x):
        _CountsTraces.traces += 1
        return x * 2


def test_predict_batches_pads_a_short_last_batch_and_traces_once():
    images, flags = keras.Input((3,)), keras.Input((1,))
    model = keras.Model([images, flags], _CountsTraces()(images) + flags)
    rows = np.arange(21, dtype="float32").reshape(7, 3)
    batches = [(rows[:3], np.ones((3, 1), "float32")), (rows[3:6], np.zeros((3, 1), "float32")),
               (rows[6:], np.ones((1, 1), "float32"))]
    _CountsTraces.traces = 0
    outputs = model_lib.predict_batches(model, batches)
    np.testing.assert_allclose(outputs, rows * 2 + np.array([[1]] * 3 + [[0]] * 3 + [[1]]))
    assert _CountsTraces.traces == 1
    # A given batch size pads every batch to it, the first too.
    assert model_lib.predict_batches(model, batches[2:], batch_size=3).shape == (1, 3)
    assert _CountsTraces.traces == 1
