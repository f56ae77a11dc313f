"""KFP components: thin wrappers that call the ML code in this package.

Each runs in the project's image (configs.CPU_IMAGE / GPU_IMAGE) where the package is
installed; kfp.local's SubprocessRunner runs them in the current environment instead.
"""
import functools
from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import configs

cpu_component = functools.partial(dsl.component, base_image=configs.CPU_IMAGE,
                                  install_kfp_package=False)
gpu_component = functools.partial(dsl.component, base_image=configs.GPU_IMAGE,
                                  install_kfp_package=False)


@cpu_component
def preprocess(data_dir: str, backbone: str, image_size: int, train_ratio: float,
               validation_ratio: float,
               test_ratio: float, seed: int, resize_mode: str, num_workers: int,
               shard_size_mb: int, min_images_per_class: int, max_rejected_fraction: float,
               max_image_pixels: int, previous_manifest: str, tfds_data_dir: str,
               tfds_splits: str, image_format: str, near_duplicate_distance: int,
               dataset: Output[Dataset],
               manifest: Output[Dataset], summary: Output[Metrics]):
    """Resizes (image_size 0: to the backbone's native size), splits and writes the images as
    sharded TFRecords plus a manifest; the summary counts reconcile: inputs = written +
    duplicates + rejected."""
    from components import backbone_catalog, preprocess as lib

    image_size = backbone_catalog.resolve_image_size(backbone, image_size)
    metadata = lib.run(data_dir, dataset.path, manifest.path, image_size, train_ratio,
                       validation_ratio, test_ratio, seed, resize_mode=resize_mode,
                       num_workers=num_workers, min_images_per_class=min_images_per_class,
                       max_rejected_fraction=max_rejected_fraction,
                       max_image_pixels=max_image_pixels, previous_manifest=previous_manifest,
                       shard_size_mb=shard_size_mb, tfds_data_dir=tfds_data_dir,
                       tfds_splits=tfds_splits, image_format=image_format,
                       near_duplicate_distance=near_duplicate_distance)
    dataset.metadata.update(lib.artifact_metadata(metadata))
    for name, value in metadata["summary"].items():
        summary.log_metric(name, value)


@cpu_component
def preprocess_list(data_dir: str, listing: Output[Dataset]):
    """Fan-out, first step: lists the input files once for the groups."""
    from pathlib import Path

    from components import preprocess as lib

    lib.save_listing(data_dir, Path(listing.path))


@cpu_component
def preprocess_group(listing: Input[Dataset], group: int, groups: int, backbone: str,
                     image_size: int, resize_mode: str, max_image_pixels: int,
                     image_format: str, num_workers: int, part: Output[Dataset]):
    """Fan-out, one pod per group: hashes and encodes its slice of the listing (image_size
    0: at the backbone's native size)."""
    from pathlib import Path

    from components import backbone_catalog, images, preprocess as lib

    image_size = backbone_catalog.resolve_image_size(backbone, image_size)
    lib.encode_group(Path(listing.path), group, groups, Path(part.path),
                     images.EncodeOptions(image_size, resize_mode, max_image_pixels,
                                          image_format),
                     num_workers)


@cpu_component
def preprocess_merge(parts: Input[List[Dataset]], train_ratio: float, validation_ratio: float,
                     test_ratio: float, seed: int, num_workers: int, shard_size_mb: int,
                     min_images_per_class: int, max_rejected_fraction: float,
                     previous_manifest: str, near_duplicate_distance: int,
                     dataset: Output[Dataset], manifest: Output[Dataset],
                     summary: Output[Metrics]):
    """Fan-out, last step: the groups' parts -> the same outputs as `preprocess`."""
    from pathlib import Path

    from components import preprocess as lib

    metadata = lib.merge([Path(part.path) for part in parts], dataset.path, manifest.path,
                         train_ratio, validation_ratio, test_ratio, seed,
                         shard_size_mb=shard_size_mb, num_workers=num_workers,
                         min_images_per_class=min_images_per_class,
                         max_rejected_fraction=max_rejected_fraction,
                         previous_manifest=previous_manifest,
                         near_duplicate_distance=near_duplicate_distance)
    dataset.metadata.update(lib.artifact_metadata(metadata))
    for name, value in metadata["summary"].items():
        summary.log_metric(name, value)


@gpu_component
def train(dataset: Input[Dataset], backbone: str, weights: str, pooling: str,
          head_dense_units: str, head_batch_norm: bool, dropout: float, weight_decay: float,
          augment_flip: str, augment_rotation: float, augment_zoom: float,
          augment_translation: float, augment_shear: float, augment_contrast: float,
          augment_brightness: float, augment_color_jitter: float, augment_blur: float,
          augment_erasing: float, augment_fill_mode: str, epochs: int,
          learning_rate: float, batch_size: int, optimizer: str, lr_schedule: str,
          warmup_epochs: int, label_smoothing: float, class_weighting: str,
          mixed_precision: str, steps_per_execution: int, backend: str,
          early_stopping_patience: int, reduce_lr_patience: int, target_accuracy: float,
          cache_budget_mb: int, seed: int, head_feature_views: int, train_nodes: int,
          run_id: str, task_name: str, model: Output[Model], history: Output[Artifact],
          tensorboard: Output[Artifact], initial_model: Output[Model], tuned: dict = {}):
    """Trains a new head on the frozen pretrained backbone (saved before training too, as
    initial_model, for evaluate's comparison); with head_feature_views > 0, on cached
    backbone features of that many augmented views of each train image. Resumes after the
    last completed epoch when a retry finds the state of a killed attempt. tuned: the best
    tuning trial's parameters, which replace those given (empty: no tuning). With
    train_nodes > 1, on that many nodes of a Kubeflow Trainer TrainJob named after run_id
    and task_name (KFP's placeholders)."""
    from components import keras_backend, tuning

    parameters = tuning.apply(locals(), tuned)
    keras_backend.select(backend)  # Before anything imports keras.
    from components import steps

    if tuned:
        print(f"train: with the best trial's parameters: {tuned}", flush=True)
    result = steps.run("train", parameters)
    model.metadata.update({"backbone": backbone, "epochs": result["epoch"][-1],
                           "backend": backend, "tuned": tuned, "train_nodes": train_nodes})


@gpu_component
def fine_tune(dataset: Input[Dataset], trained_model: Input[Model],
              train_history: Input[Artifact], fine_tune_layers: str, domain_similarity: str,
              fine_tune_learning_rate: float, fine_tune_epochs: int, batch_size: int,
              optimizer: str, lr_schedule: str, warmup_epochs: int, label_smoothing: float,
              class_weighting: str, mixed_precision: str, steps_per_execution: int,
              backend: str, early_stopping_patience: int, reduce_lr_patience: int,
              target_accuracy: float, cache_budget_mb: int, seed: int, train_nodes: int,
              run_id: str, task_name: str, model: Output[Model], history: Output[Artifact],
              tensorboard: Output[Artifact], tuned: dict = {}):
    """Unfreezes the top backbone layers and trains further with a low learning rate.
    Resumes after the last completed epoch when a retry finds the state of a killed attempt.
    tuned: the best tuning trial's parameters, which replace those given (empty: none). With
    train_nodes > 1, on that many nodes of a Kubeflow Trainer TrainJob."""
    from components import keras_backend, tuning

    parameters = tuning.apply(locals(), tuned)
    keras_backend.select(backend)  # Before anything imports keras.
    from components import steps

    if tuned:
        print(f"fine_tune: with the best trial's parameters: {tuned}", flush=True)
    steps.run("fine_tune", parameters)
    model.metadata.update({"backend": backend, "tuned": tuned, "train_nodes": train_nodes})


@cpu_component
def tune_sample(dataset: Input[Dataset], search_space: str, searchable: dict, trials: int,
                rounds: int, seed: int, epochs: int, fine_tune_epochs: int, batch_size: int,
                table: Output[Artifact]) -> List[dict]:
    """Tuning, first step: checks the search space (JSON) against the searchable parameters
    (name: KFP type), prints the trial budget, draws the trials (seeded) and returns the
    first round's ParallelFor items; table: the trials table, empty, with the space and the
    round plan."""
    import json
    import math
    from pathlib import Path

    from components import configs, tuning

    space = json.loads(search_space)
    dimensions = tuning.parse_space(space, "(compiled into the pipeline)", searchable)
    rounds_ = tuning.plan(trials, rounds, epochs, fine_tune_epochs)
    metadata = json.loads(Path(dataset.path, configs.METADATA_FILE).read_text())
    print(tuning.describe_budget(rounds_, fine_tune_epochs,
                                 math.ceil(metadata["num_examples"]["train"] / batch_size)),
          flush=True)
    with open(table.path, "w") as f:
        f.write(tuning.dumps(tuning.new_table(space, rounds_, seed)))
    return tuning.items(tuning.configurations(dimensions, trials, seed), 0, rounds_[0])


@gpu_component
def tune_trial(dataset: Input[Dataset], trial: dict, backbone: str, weights: str,
               pooling: str, head_dense_units: str, head_batch_norm: bool, dropout: float,
               weight_decay: float, augment_flip: str, augment_rotation: float,
               augment_zoom: float, augment_translation: float, augment_shear: float,
               augment_contrast: float, augment_brightness: float,
               augment_color_jitter: float, augment_blur: float, augment_erasing: float,
               augment_fill_mode: str, learning_rate: float, batch_size: int,
               optimizer: str, lr_schedule: str, warmup_epochs: int, label_smoothing: float,
               class_weighting: str, mixed_precision: str, steps_per_execution: int,
               backend: str, early_stopping_patience: int, reduce_lr_patience: int,
               target_accuracy: float, cache_budget_mb: int, seed: int,
               head_feature_views: int, fine_tune_layers: str, domain_similarity: str,
               fine_tune_learning_rate: float, result: Output[Artifact]):
    """Tuning, one trial (a ParallelFor item: its parameters and epochs): train, then
    fine_tune, briefly, as those steps do; result: its row of the trials table (validation
    accuracy and loss of the model it ends with, seconds). Resumes like train on a retry."""
    import json
    import time

    from components import keras_backend, tuning

    started = time.monotonic()
    base = dict(locals())
    trial = tuning.resolve(trial, base)
    overrides, parameters = tuning.trial_parameters(base, trial)
    keras_backend.select(backend)  # Before anything imports keras.
    from components import tfrecords, training

    print(f"tune: trial {int(trial['trial'])}, round {int(trial['round']) + 1}, "
          f"{parameters['epochs']}+{parameters['fine_tune_epochs']} epochs on "
          f"{float(trial['train_fraction']):.0%} of the train split: {overrides}",
          flush=True)
    histories = training.run_trial(parameters, dataset.path,
                                   training.state_location(result.uri, result.path),
                                   float(trial["train_fraction"]))
    row = tuning.trial_row(trial, overrides, *tuning.score(*histories),
                           time.monotonic() - started,
                           tfrecords.read_metadata(dataset.path)["num_examples"]["validation"])
    with open(result.path, "w") as f:
        json.dump(row, f)
    result.metadata.update({k: row[k] for k in ("trial", "round", "val_accuracy")})


@cpu_component
def tune_select(results: Input[List[Artifact]], table: Input[Artifact],
                tuning: Output[Artifact], best_trial: Output[Metrics]) -> List[dict]:
    """Tuning, after each round but the last: adds the round's trials to the table (tuning:
    JSON) and returns the survivors, with the next round's epochs, as the next round's
    ParallelFor items. best_trial: the best so far (KFP Metrics). (One output each, this and
    tune_best: kfp.local 2.17.0 cannot loop over a named output.)"""
    from components import tuning as lib

    updated, survivors = lib.finish_round([r.path for r in results], table.path, tuning.path)
    for name, value in lib.best_metrics(updated["best"]).items():
        best_trial.log_metric(name, value)
    return survivors


@cpu_component
def tune_best(results: Input[List[Artifact]], table: Input[Artifact],
              tuning: Output[Artifact], best_trial: Output[Metrics]) -> dict:
    """Tuning, after the last round: adds its trials to the table (tuning: JSON, the whole
    table) and returns the best trial's parameters, for train and fine_tune. best_trial:
    its validation accuracy and numeric parameters (KFP Metrics)."""
    from components import tuning as lib

    updated, _ = lib.finish_round([r.path for r in results], table.path, tuning.path)
    for name, value in lib.best_metrics(updated["best"]).items():
        best_trial.log_metric(name, value)
    tuning.metadata.update({"trials": len(updated["trials"]),
                            "best_val_accuracy": updated["best"]["val_accuracy"]})
    return updated["best"]["overrides"]


@cpu_component
def evaluate(dataset: Input[Dataset], model: Input[Model], initial_model: Input[Model],
             train_history: Input[Artifact], fine_tune_history: Input[Artifact],
             batch_size: int, top_k: int,
             min_test_accuracy: float, baseline_model: str, baseline_tolerance: float,
             metrics: Output[Metrics], classification_metrics: Output[ClassificationMetrics],
             report: Output[HTML], evaluation: Output[Artifact],
             tuning: Input[Artifact] = None) -> bool:
    """Test-split metrics, also of the initial model (before training) for comparison,
    confusion matrix (and ROC curve for 2 classes), an HTML report, and the export gate.
    Returns whether to export. (Decided here, returned as the single unnamed output:
    kfp.local 2.17.0's dsl.If cannot compare two channels, nor resolve a named output of a
    task.) The decision's reason is in `evaluation` and the log. tuning: the trials table,
    when the pipeline tuned (a section of the report)."""
    import json

    from components import evaluation as lib, tfrecords, training

    class_names = tfrecords.read_metadata(dataset.path)["class_names"]
    result, predictions = lib.evaluate(model.path, dataset.path, batch_size, top_k,
                                       min_test_accuracy, baseline_model, baseline_tolerance,
                                       initial_model.path)
    scalars = lib.scalar_metrics(result)
    scalars["export_approved"] = float(result["gate"]["approved"])
    scalars.update({f"initial_{name}": value
                    for name, value in lib.scalar_metrics(result["initial"]).items()})
    if result["gate"]["baseline_accuracy"] is not None:
        scalars["baseline_accuracy"] = result["gate"]["baseline_accuracy"]
    for name, value in scalars.items():
        metrics.log_metric(name, value)
    classification_metrics.log_confusion_matrix(class_names, result["confusion_matrix"])
    if "roc" in result:
        roc = result["roc"]
        classification_metrics.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    with open(report.path, "w") as f:
        f.write(lib.render_report(result, predictions, class_names,
                                  training.load_history(train_history.path),
                                  training.load_history(fine_tune_history.path),
                                  json.loads(open(tuning.path).read()) if tuning else None))
    with open(evaluation.path, "w") as f:
        json.dump(result, f, indent=2)
    evaluation.metadata.update({"export_approved": result["gate"]["approved"],
                                "gate_reason": result["gate"]["reason"]})
    approved = result["gate"]["approved"]
    print(f"evaluate: test accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} "
          f"(before training {result['initial']['accuracy']:.4f}, "
          f"{result['initial']['loss']:.4f}); "
          f"export {'approved' if approved else 'held back'}: {result['gate']['reason']}",
          flush=True)
    return approved


@cpu_component
def export(dataset: Input[Dataset], model: Input[Model], evaluation: Input[Artifact],
           train_history: Input[Artifact], fine_tune_history: Input[Artifact], backbone: str,
           export_destination: str, exported_model: Output[Model]) -> str:
    """SavedModel (image bytes and image signatures), .keras model, labels, TFLite models
    and a model card, all verified; a new numbered version under export_destination. Returns
    that version's URI ("" without a destination), for the register step."""
    import json

    from components import export as lib, training

    summary = lib.export(model.path, dataset.path, exported_model.path, backbone,
                         json.loads(open(evaluation.path).read()),
                         {"train": training.load_history(train_history.path),
                          "fine_tune": training.load_history(fine_tune_history.path)},
                         export_destination)
    exported_model.metadata.update(summary)
    return summary.get("published", "")


@cpu_component
def register(model_registry: str, registered_model_name: str, published: str,
             exported_model: Input[Model], run_id: str, run_name: str,
             registration: Output[Artifact]):
    """Records the published version (export's URI) in the Kubeflow Model Registry at
    model_registry, with the model card's test metrics, backbone and classes, and this run
    as its source; a version already registered with that URI is left as it is."""
    import json
    from pathlib import Path

    from components import configs, model_registry as lib

    card = json.loads((Path(exported_model.path) / configs.MODEL_CARD_FILE).read_text())
    result = lib.register(model_registry, registered_model_name, published, card,
                          lib.Source(run_id, run_name, lib.current_namespace()))
    Path(registration.path).write_text(json.dumps(result, indent=2))
    registration.metadata.update(result)
    print(f"register: {result['model_registry_uri']} -> {published} "
          f"({'registered' if result['created'] else 'already registered'})", flush=True)
