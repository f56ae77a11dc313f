"""Checks pipeline parameters before any work starts, so mistakes fail in seconds with one
clear message rather than deep inside a step."""
from pathlib import Path

from components import backbones, images, model as model_lib, preprocess
from components.errors import TlpError


def _at_least(params: dict, name: str, minimum: int) -> None:
    if params[name] < minimum:
        raise TlpError(f"{name}={params[name]} must be at least {minimum}.")


def validate_parameters(params: dict, local: bool, require_data_dir: bool = True) -> None:
    """params: the pipeline's arguments. local: paths are on this machine, so check them.
    require_data_dir: False when compiling, where data_dir may be left for run time."""
    backbones.validate_image_size(params["backbone"], params["image_size"])
    preprocess.validate_ratios(params["train_ratio"], params["validation_ratio"],
                               params["test_ratio"])
    for name, minimum in (("epochs", 1), ("fine_tune_epochs", 0), ("batch_size", 1),
                          ("fine_tune_layers", 0), ("early_stopping_patience", 0),
                          ("reduce_lr_patience", 0), ("cache_budget_mb", 0),
                          ("num_workers", 0), ("min_images_per_class", 1),
                          ("max_image_pixels", 1)):
        _at_least(params, name, minimum)
    if params["pooling"] not in model_lib.POOLING_MODES:
        raise TlpError(f"pooling={params['pooling']!r}; choose one of "
                       f"{', '.join(model_lib.POOLING_MODES)}.")
    if params["augment_flip"] not in model_lib.FLIP_MODES:
        raise TlpError(f"augment_flip={params['augment_flip']!r}; choose one of "
                       f"{', '.join(model_lib.FLIP_MODES)}.")
    if params["resize_mode"] not in images.RESIZE_MODES:
        raise TlpError(f"resize_mode={params['resize_mode']!r}; choose one of "
                       f"{', '.join(images.RESIZE_MODES)}.")
    if not 0 <= params["max_rejected_fraction"] <= 1:
        raise TlpError(f"max_rejected_fraction={params['max_rejected_fraction']} must be "
                       "in [0, 1].")
    if not 0 <= params["dropout"] < 1:
        raise TlpError(f"dropout={params['dropout']} must be in [0, 1).")
    if require_data_dir and not params.get("data_dir"):
        raise TlpError("data_dir is required: a folder with one sub-folder of images per class.")
    weights = params["weights"]
    if local:
        preprocess.scan_class_folders(params["data_dir"])
        previous = params["previous_manifest"]
        if previous and "://" not in previous and not Path(previous).is_file():
            raise TlpError(f"previous_manifest {previous} does not exist: pass the manifest "
                           "Parquet file of an earlier run, or leave it empty.")
        if weights not in ("imagenet", "none") and "://" not in weights \
                and not Path(weights).is_file():
            raise TlpError(f"weights file {weights} does not exist: pass weights=imagenet, "
                           "weights=none or the path of a weights file.")
