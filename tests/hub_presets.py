"""Tiny random-initialised KerasHub presets for the tests, saved as local preset folders the way
a user makes one offline (save_to_preset of the backbone and of its image converter): a few
layers, a tiny hidden size, 32 px images. Never real weights: they test the plumbing (build,
preprocessing, pooling, train, fine-tune, export, predict), not accuracy."""
from pathlib import Path

SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalise(mean, std) -> dict:
    """The converter arguments of (x / 255 - mean) / std, as KerasHub's presets write them."""
    return {"scale": [1 / (255 * s) for s in std], "offset": [-m / s for m, s in zip(mean, std)]}


def _tiny(kind: str):
    """(backbone, image converter) of one kind, random weights."""
    import keras
    from keras_hub import layers, models

    keras.utils.set_random_seed(7)
    shape = (SIZE, SIZE, 3)
    size = (SIZE, SIZE)
    transformer = dict(patch_size=8, num_layers=3, num_heads=2, hidden_dim=16)
    if kind in ("vit", "vit_mean"):
        return (models.ViTBackbone(image_shape=shape, mlp_dim=32,
                                   use_class_token=kind == "vit", **transformer),
                layers.ViTImageConverter(image_size=size, scale=1 / 127.5, offset=-1))
    if kind == "dinov2":  # With register tokens, as dinov2_with_registers_*: CLS stays first.
        return (models.DINOV2Backbone(intermediate_dim=32, image_shape=shape,
                                      position_embedding_shape=shape, num_register_tokens=2,
                                      **transformer),
                layers.DINOV2ImageConverter(image_size=size,
                                            **_normalise(IMAGENET_MEAN, IMAGENET_STD)))
    if kind == "dinov3":  # Rotary position embeddings; CLS, then 4 register tokens.
        return (models.DINOV3Backbone(intermediate_dim=32, image_shape=shape, **transformer),
                layers.DINOV3ImageConverter(image_size=size,
                                            **_normalise(IMAGENET_MEAN, IMAGENET_STD)))
    if kind == "clip":
        vision = models.CLIPVisionEncoder(intermediate_dim=32, image_shape=shape, **transformer)
        text = models.CLIPTextEncoder(vocabulary_size=64, embedding_dim=16, hidden_dim=16,
                                      num_layers=1, num_heads=2, intermediate_dim=32,
                                      max_sequence_length=8)
        return (models.CLIPBackbone(vision, text, projection_dim=8),
                layers.CLIPImageConverter(image_size=size, interpolation="bicubic",
                                          **_normalise(CLIP_MEAN, CLIP_STD)))
    if kind == "siglip":
        vision = models.SigLIPVisionEncoder(intermediate_dim=32, image_shape=shape,
                                            **transformer)
        text = models.SigLIPTextEncoder(vocabulary_size=64, embedding_dim=16, hidden_dim=16,
                                        num_layers=1, num_heads=2, intermediate_dim=32,
                                        max_sequence_length=8)
        return (models.SigLIPBackbone(vision, text),
                layers.SigLIPImageConverter(image_size=size, interpolation="bicubic",
                                            scale=1 / 127.5, offset=-1))
    if kind == "resnet":  # KerasHub's ResNet needs 64 filters in its first stack.
        return (models.ResNetBackbone(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                                      stackwise_num_filters=[64, 16],
                                      stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
                                      block_type="basic_block", image_shape=(None, None, 3)),
                layers.ResNetImageConverter(image_size=size,
                                            **_normalise(IMAGENET_MEAN, IMAGENET_STD)))
    raise ValueError(kind)


KINDS = ("vit", "vit_mean", "dinov2", "dinov3", "clip", "siglip", "resnet")


def save_preset(kind: str, folder: Path, weights: bool = True) -> Path:
    """A local preset folder of one kind: config.json, model.weights.h5, metadata.json,
    image_converter.json."""
    backbone, converter = _tiny(kind)
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    if not weights:
        (folder / "model.weights.h5").unlink()
    return folder
