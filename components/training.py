"""Train (frozen backbone, new head) and fine-tune (top backbone layers unfrozen)."""
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras

from components import configs, model as model_lib, tfrecords


class TargetAccuracyStop(keras.callbacks.Callback):
    """Stops training once val_accuracy reaches the target."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is not None and accuracy >= self.target:
            print(f"val_accuracy {accuracy:.4f} reached the target {self.target}: stopping.",
                  flush=True)
            self.model.stop_training = True


@dataclass(frozen=True)
class FitOptions:
    epochs: int
    batch_size: int = configs.BATCH_SIZE
    early_stopping_patience: int = configs.EARLY_STOPPING_PATIENCE
    reduce_lr_patience: int = configs.REDUCE_LR_PATIENCE
    target_accuracy: float = configs.TARGET_ACCURACY
    cache_budget_mb: int = configs.CACHE_BUDGET_MB
    seed: int = configs.SEED


def make_callbacks(checkpoint_path: Path, options: FitOptions,
                   best_val_loss: float | None) -> list[keras.callbacks.Callback]:
    return [
        keras.callbacks.ModelCheckpoint(str(checkpoint_path), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_val_loss),
        keras.callbacks.EarlyStopping(monitor="val_loss",
                                      patience=options.early_stopping_patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                          patience=options.reduce_lr_patience, min_lr=1e-7),
        TargetAccuracyStop(options.target_accuracy),
    ]


def fit(model: keras.Model, dataset_dir: str, options: FitOptions,
        initial_epoch: int = 0, best_val_loss: float | None = None) -> dict:
    """Fits on the train split, validating on the validation split, and ends with the
    weights of the epoch with the lowest val_loss. When best_val_loss is given (fine-tuning),
    the incoming weights count as a candidate with that loss, so the result is never worse
    on validation than the model that came in. Returns the history (absolute epochs)."""
    num_classes = tfrecords.read_metadata(dataset_dir)["num_classes"]
    binary = model_lib.is_binary(num_classes)
    train = tfrecords.load_split(dataset_dir, "train", options.batch_size, training=True,
                                 cache_budget_mb=options.cache_budget_mb, seed=options.seed,
                                 binary=binary)
    validation = tfrecords.load_split(dataset_dir, "validation", options.batch_size,
                                      training=False, cache_budget_mb=options.cache_budget_mb,
                                      binary=binary)
    with tempfile.TemporaryDirectory() as work_dir:
        checkpoint = Path(work_dir) / "best.weights.h5"
        if best_val_loss is not None:
            model.optimizer.build(model.trainable_variables)  # So it reloads cleanly.
            model.save_weights(str(checkpoint))
        history = model.fit(train, validation_data=validation,
                            epochs=initial_epoch + options.epochs, initial_epoch=initial_epoch,
                            verbose=2, shuffle=False,  # The dataset shuffles itself.
                            callbacks=make_callbacks(checkpoint, options, best_val_loss))
        if checkpoint.exists():
            model.load_weights(str(checkpoint))
    record = {name: [float(v) for v in values] for name, values in history.history.items()}
    record["epoch"] = [initial_epoch + i + 1 for i in range(len(history.epoch))]
    return record


def best_val_loss(history: dict) -> float:
    return min(history["val_loss"])


def save_history(history: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(history, indent=2))


def load_history(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def train(dataset_dir: str, model_path: str, history_path: str, backbone: str, weights: str,
          pooling: str, dropout: float, augmentation: model_lib.Augmentation,
          learning_rate: float, options: FitOptions) -> dict:
    """The train step: new head on the frozen pretrained backbone."""
    keras.utils.set_random_seed(options.seed)
    metadata = tfrecords.read_metadata(dataset_dir)
    model = model_lib.build_model(metadata["num_classes"], backbone, metadata["image_size"],
                                  weights, pooling, dropout, augmentation)
    model_lib.compile_model(model, metadata["num_classes"], learning_rate)
    model.summary(print_fn=lambda line, **_: print(line, flush=True))
    history = fit(model, dataset_dir, options)
    model.save(model_path)
    save_history(history, history_path)
    return history


def fine_tune(dataset_dir: str, model_in: str, history_in: str, model_path: str,
              history_path: str, num_layers: int, learning_rate: float,
              options: FitOptions) -> dict:
    """The fine_tune step: unfreeze the top backbone layers, recompile with a low learning
    rate and continue the epoch count of the train step."""
    keras.utils.set_random_seed(options.seed)
    metadata = tfrecords.read_metadata(dataset_dir)
    model = keras.models.load_model(model_in, compile=False)
    trainable = model_lib.unfreeze_top_layers(model, num_layers)
    print(f"fine_tune: {trainable} of {len(model_lib.backbone_of(model).layers)} backbone "
          "layers trainable", flush=True)
    model_lib.compile_model(model, metadata["num_classes"], learning_rate)
    previous = load_history(history_in)
    history = fit(model, dataset_dir, options, initial_epoch=previous["epoch"][-1],
                  best_val_loss=best_val_loss(previous))
    model.save(model_path)
    save_history(history, history_path)
    return history
