"""KFP components: thin wrappers that call the ML code in this package.

Each runs in the project's image (configs.CPU_IMAGE / GPU_IMAGE) where the package is
installed; kfp.local's SubprocessRunner runs them in the current environment instead.
"""
import functools

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import configs

cpu_component = functools.partial(dsl.component, base_image=configs.CPU_IMAGE,
                                  install_kfp_package=False)
gpu_component = functools.partial(dsl.component, base_image=configs.GPU_IMAGE,
                                  install_kfp_package=False)


@cpu_component
def preprocess(data_dir: str, image_size: int, train_ratio: float, validation_ratio: float,
               test_ratio: float, seed: int, resize_mode: str, num_workers: int,
               min_images_per_class: int, max_rejected_fraction: float, max_image_pixels: int,
               previous_manifest: str, dataset: Output[Dataset], manifest: Output[Dataset],
               summary: Output[Metrics]):
    """Resizes, splits and writes the images as sharded TFRecords plus a manifest; the
    summary counts reconcile: inputs = written + duplicates + rejected."""
    from components import preprocess as lib

    metadata = lib.run(data_dir, dataset.path, manifest.path, image_size, train_ratio,
                       validation_ratio, test_ratio, seed, resize_mode=resize_mode,
                       num_workers=num_workers, min_images_per_class=min_images_per_class,
                       max_rejected_fraction=max_rejected_fraction,
                       max_image_pixels=max_image_pixels, previous_manifest=previous_manifest)
    dataset.metadata.update({key: metadata[key] for key in
                             ("class_names", "image_size", "num_examples", "num_rejected")})
    for name, value in metadata["summary"].items():
        summary.log_metric(name, value)


@gpu_component
def train(dataset: Input[Dataset], backbone: str, weights: str, pooling: str, dropout: float,
          augment_flip: str, augment_rotation: float, augment_zoom: float,
          augment_translation: float, augment_contrast: float, epochs: int,
          learning_rate: float, batch_size: int, early_stopping_patience: int,
          reduce_lr_patience: int, target_accuracy: float, cache_budget_mb: int, seed: int,
          model: Output[Model], history: Output[Artifact]):
    """Trains a new head on the frozen pretrained backbone."""
    from components import model as model_lib, training

    augmentation = model_lib.Augmentation(augment_flip, augment_rotation, augment_zoom,
                                          augment_translation, augment_contrast)
    options = training.FitOptions(epochs, batch_size, early_stopping_patience,
                                  reduce_lr_patience, target_accuracy, cache_budget_mb, seed)
    model.path += ".keras"  # Keras picks the format by extension.
    result = training.train(dataset.path, model.path, history.path, backbone, weights, pooling,
                            dropout, augmentation, learning_rate, options)
    model.metadata.update({"backbone": backbone, "epochs": result["epoch"][-1]})


@gpu_component
def fine_tune(dataset: Input[Dataset], trained_model: Input[Model],
              train_history: Input[Artifact], fine_tune_layers: int,
              fine_tune_learning_rate: float, fine_tune_epochs: int, batch_size: int,
              early_stopping_patience: int, reduce_lr_patience: int, target_accuracy: float,
              cache_budget_mb: int, seed: int, model: Output[Model],
              history: Output[Artifact]):
    """Unfreezes the top backbone layers and trains further with a low learning rate."""
    from components import training

    options = training.FitOptions(fine_tune_epochs, batch_size, early_stopping_patience,
                                  reduce_lr_patience, target_accuracy, cache_budget_mb, seed)
    model.path += ".keras"
    training.fine_tune(dataset.path, trained_model.path, train_history.path, model.path,
                       history.path, fine_tune_layers, fine_tune_learning_rate, options)


@cpu_component
def evaluate(dataset: Input[Dataset], model: Input[Model], train_history: Input[Artifact],
             fine_tune_history: Input[Artifact], batch_size: int, min_test_accuracy: float,
             metrics: Output[Metrics], classification_metrics: Output[ClassificationMetrics],
             report: Output[HTML], evaluation: Output[Artifact]) -> bool:
    """Test-split metrics, confusion matrix, an HTML report with the training curves.
    Returns whether the model is accurate enough to export. (Decided here, returned as the
    single unnamed output: kfp.local 2.17.0's dsl.If cannot compare two channels, nor
    resolve a named output of a task.)"""
    import json

    import keras

    from components import evaluation as lib, tfrecords, training

    class_names = tfrecords.read_metadata(dataset.path)["class_names"]
    labels, probs, scores = lib.predict_split(keras.models.load_model(model.path),
                                              dataset.path, "test", batch_size)
    summary = lib.classification_summary(labels, probs, class_names)
    metrics.log_metric("test_accuracy", summary["accuracy"])
    metrics.log_metric("test_loss", scores["loss"])
    for name, values in summary["per_class"].items():
        for key in ("precision", "recall", "f1"):
            metrics.log_metric(f"{key}/{name}", values[key])
    classification_metrics.log_confusion_matrix(class_names, summary["confusion_matrix"])
    with open(report.path, "w") as f:
        f.write(lib.render_report(summary, scores, class_names,
                                  training.load_history(train_history.path),
                                  training.load_history(fine_tune_history.path)))
    approved = summary["accuracy"] >= min_test_accuracy
    with open(evaluation.path, "w") as f:
        json.dump({**summary, "test_loss": scores["loss"], "export_approved": approved,
                   "min_test_accuracy": min_test_accuracy}, f, indent=2)
    print(f"evaluate: test accuracy {summary['accuracy']:.4f}, loss {scores['loss']:.4f}; "
          f"export {'approved' if approved else 'held back'} "
          f"(min_test_accuracy {min_test_accuracy})", flush=True)
    return approved


@cpu_component
def export(dataset: Input[Dataset], model: Input[Model], exported_model: Output[Model]):
    """SavedModel serving encoded image bytes, the .keras model and labels, verified."""
    from components import export as lib

    difference = lib.export(model.path, dataset.path, exported_model.path)
    exported_model.metadata["max_saved_model_difference"] = difference
