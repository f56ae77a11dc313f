"""Checks pipeline parameters before any work starts, so mistakes fail in seconds with one
clear message rather than deep inside a step."""
from pathlib import Path

from components import (accelerators, backbones, configs, hub_backbones, images,
                        keras_backend, model as model_lib, model_registry, preprocess,
                        sources, storage, training)
from components.errors import TlpError


def _check_scheme(name: str, value: str) -> None:
    if "://" in value and not storage.is_remote(value):
        raise TlpError(f"{name}={value}: use a local path, gs://BUCKET/... or s3://BUCKET/... "
                       "(for MinIO and other S3-compatible stores, s3:// with "
                       "AWS_ENDPOINT_URL_S3 set).")


def _at_least(params: dict, name: str, minimum: int) -> None:
    if params[name] < minimum:
        raise TlpError(f"{name}={params[name]} must be at least {minimum}.")


def _validate_fine_tune_layers(params: dict) -> None:
    """A layer name can only be checked against the backbone itself (built untrained)."""
    spec = str(params["fine_tune_layers"])
    if spec == "auto":
        model_lib.auto_unfreeze([1], params["domain_similarity"])
    elif isinstance(model_lib.parse_unfreeze(spec), str):
        base = backbones.build_backbone(params["backbone"], params["image_size"], "none")
        model_lib.layers_to_unfreeze(base, spec)


def _validate_source(params: dict, local: bool) -> None:
    """Local folders and listings are listed in full (it is quick); buckets and TFDS datasets
    are only checked for form here, and listed by the preprocess step."""
    source = params.get("data_dir")
    source_kind = sources.kind(source) if source else ""
    for name in ("tfds_data_dir", "tfds_splits"):
        if params[name] and source and source_kind != "tfds":
            raise TlpError(f"{name}={params[name]!r} applies to tfds: sources only, and "
                           f"data_dir={source!r} is not one: leave it empty.")
    if not local or not source:
        return
    if source_kind == "tfds":
        data_dir = params["tfds_data_dir"]
        if data_dir and not storage.is_remote(data_dir) and not Path(data_dir).is_dir():
            raise TlpError(f"tfds_data_dir {data_dir} does not exist: pass the folder the "
                           "dataset was prepared in, or leave it empty.")
    elif not storage.is_remote(source):
        sources.list_source(source)


def _validate_train_nodes(params: dict, local: bool) -> None:
    """Several nodes: a Kubeflow Trainer TrainJob on its jax-distributed runtime, so JAX, on a
    cluster (components/trainjob.py)."""
    nodes = params["train_nodes"]
    if nodes < 1:
        raise TlpError(f"train_nodes={nodes} must be 1 or more.")
    if nodes == 1:
        return
    if params["backend"] != "jax":
        raise TlpError(f"train_nodes={nodes} needs backend=jax: training over several nodes "
                       "runs on Kubeflow Trainer's jax-distributed runtime, and TensorFlow's "
                       "multi-worker training has no Trainer v2 runtime. Pass --backend jax, "
                       "or --train-nodes 1.")
    if local:
        raise TlpError(f"train_nodes={nodes}: tlp run --local runs each step as one local "
                       "process; several nodes need a Kubeflow cluster with Trainer v2.2+ "
                       "(tlp submit/compile --train-nodes N). Use --train-nodes 1 here.")


def validate_parameters(params: dict, local: bool, require_data_dir: bool = True) -> dict:
    """params: the pipeline's arguments. local: paths are on this machine, so check them.
    require_data_dir: False when compiling, where data_dir may be left for run time. Returns
    them with image_size 0 resolved to the backbone's native size (for a hub: preset, only
    when local: its size is in its files, which the preprocess step reads otherwise)."""
    backbone = params["backbone"]
    if hub_backbones.is_hub(backbone):  # Known, installed, fetchable: up front.
        hub_backbones.validate(backbone, params["weights"], local)
    if local or not hub_backbones.is_hub(backbone):
        params = {**params, "image_size": backbones.resolve_image_size(backbone,
                                                                       params["image_size"])}
    else:
        backbones.validate_image_size(backbone, params["image_size"])
    preprocess.validate_ratios(params["train_ratio"], params["validation_ratio"],
                               params["test_ratio"])
    for name, minimum in (("epochs", 1), ("fine_tune_epochs", 0), ("batch_size", 1),
                          ("early_stopping_patience", 0), ("reduce_lr_patience", 0),
                          ("cache_budget_mb", 0), ("head_feature_views", 0),
                          ("warmup_epochs", 0),
                          ("steps_per_execution", 1), ("top_k", 1), ("num_workers", 0),
                          ("shard_size_mb", 1), ("min_images_per_class", 1),
                          ("max_image_pixels", 1)):
        _at_least(params, name, minimum)
    model_lib.Head.from_parameters(params).validate()
    model_lib.Augmentation.from_parameters(params).validate()
    if params["optimizer"] not in model_lib.OPTIMIZERS:
        raise TlpError(f"optimizer={params['optimizer']!r}; choose one of "
                       f"{', '.join(model_lib.OPTIMIZERS)}.")
    if not 0 <= params["label_smoothing"] < 1:
        raise TlpError(f"label_smoothing={params['label_smoothing']} must be in [0, 1).")
    training.learning_rate_schedule(params["learning_rate"], params["lr_schedule"], 1,
                                    params["epochs"], params["warmup_epochs"])
    training.class_weights([1], params["class_weighting"])
    _validate_fine_tune_layers(params)
    accelerators.choose_policy(params["mixed_precision"], [])
    keras_backend.validate(params["backend"])
    _validate_train_nodes(params, local)
    if params["baseline_tolerance"] < 0:
        raise TlpError(f"baseline_tolerance={params['baseline_tolerance']} must be >= 0.")
    for name in ("weights", "baseline_model", "export_destination"):
        _check_scheme(name, params[name])
    model_registry.validate(params["model_registry"], params["registered_model_name"],
                            params["export_destination"])
    if params["resize_mode"] not in images.RESIZE_MODES:
        raise TlpError(f"resize_mode={params['resize_mode']!r}; choose one of "
                       f"{', '.join(images.RESIZE_MODES)}.")
    if params["image_format"] not in configs.IMAGE_FORMATS:
        raise TlpError(f"image_format={params['image_format']!r}; choose one of "
                       f"{', '.join(configs.IMAGE_FORMATS)}.")
    preprocess.validate_near_duplicate_distance(params["near_duplicate_distance"])
    if not 0 <= params["max_rejected_fraction"] <= 1:
        raise TlpError(f"max_rejected_fraction={params['max_rejected_fraction']} must be "
                       "in [0, 1].")
    if require_data_dir and not params.get("data_dir"):
        raise TlpError(f"data_dir is required: {sources.FORMS}.")
    _validate_source(params, local)
    weights = params["weights"]
    if local:
        previous = params["previous_manifest"]
        if previous and "://" not in previous and not Path(previous).is_file():
            raise TlpError(f"previous_manifest {previous} does not exist: pass the manifest "
                           "Parquet file of an earlier run, or leave it empty.")
        if weights not in ("imagenet", "none") and not storage.exists(weights):
            raise TlpError(f"weights file {weights} does not exist: pass weights=imagenet, "
                           "weights=none or the path of a weights file.")
        baseline = params["baseline_model"]
        if baseline and not storage.exists(baseline):
            raise TlpError(f"baseline_model {baseline} does not exist: pass a .keras file or "
                           "an export folder, or leave it empty.")
    return params
