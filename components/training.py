"""Train (frozen backbone, new head) and fine-tune (top backbone layers unfrozen)."""
import contextlib
import csv
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import keras

from components import (accelerators, configs, device_feed, distributed, features,
                        model as model_lib, storage, tfrecords)
from components.errors import TlpError


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
    optimizer: str = configs.OPTIMIZER
    lr_schedule: str = configs.LR_SCHEDULE
    warmup_epochs: int = configs.WARMUP_EPOCHS
    label_smoothing: float = configs.LABEL_SMOOTHING
    class_weighting: str = configs.CLASS_WEIGHTING
    mixed_precision: str = configs.MIXED_PRECISION
    steps_per_execution: int = configs.STEPS_PER_EXECUTION

    @classmethod
    def from_parameters(cls, parameters: dict) -> "FitOptions":
        """Picks the fields by name from a step's parameters (named as the fields are)."""
        return cls(**{field.name: parameters[field.name] for field in fields(cls)})


LR_SCHEDULES = ("constant", "step", "cosine")
CLASS_WEIGHTINGS = ("auto", "balanced", "none")
# 'auto' weights classes once the largest is this many times the smallest.
IMBALANCE_RATIO = 1.5


def learning_rate_schedule(learning_rate: float, schedule: str, steps_per_epoch: int,
                           epochs: int, warmup_epochs: int = 0):
    """A float for a constant rate without warm-up (so ReduceLROnPlateau can adjust it),
    else a Keras schedule: linear warm-up, then constant, cosine decay to 0, or steps
    dividing the rate by 10 after a third and two thirds of the epochs."""
    if schedule not in LR_SCHEDULES:
        raise TlpError(f"lr_schedule={schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
    if schedule == "step":
        if warmup_epochs:
            raise TlpError("warmup_epochs works with lr_schedule constant or cosine, not step.")
        boundaries = [steps_per_epoch * max(1, epochs * k // 3) for k in (1, 2)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [learning_rate, learning_rate / 10, learning_rate / 100])
    if schedule == "constant" and not warmup_epochs:
        return learning_rate
    warmup_steps = steps_per_epoch * warmup_epochs
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 100 if warmup_steps else learning_rate,
        decay_steps=max(1, steps_per_epoch * epochs - warmup_steps),
        alpha=1.0 if schedule == "constant" else 0.0,  # alpha=1: no decay after warm-up.
        warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)


def class_weights(train_counts: list[int], weighting: str) -> dict[int, float] | None:
    """'balanced': n / (classes * count), as scikit-learn's; 'auto': balanced once the
    classes are imbalanced (IMBALANCE_RATIO); 'none': no weights."""
    if weighting not in CLASS_WEIGHTINGS:
        raise TlpError(f"class_weighting={weighting!r}; choose one of "
                       f"{', '.join(CLASS_WEIGHTINGS)}.")
    imbalanced = max(train_counts) >= IMBALANCE_RATIO * max(min(train_counts), 1)
    if weighting == "none" or (weighting == "auto" and not imbalanced):
        return None
    total = sum(train_counts)
    return {i: total / (len(train_counts) * max(count, 1))
            for i, count in enumerate(train_counts)}


class LogLearningRate(keras.callbacks.Callback):
    """Records the optimizer's current learning rate in each epoch's logs (schedules too)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


class LogEpochSeconds(keras.callbacks.Callback):
    """Records each epoch's wall time, validation included, in its logs: the history (and
    from it the model card) says how long each phase trained."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self.start


class PrintEpochMarker(keras.callbacks.Callback):
    """Prints one machine-readable line per epoch, configs.EPOCH_MARKER and the epoch's logs
    as JSON, which `tlp run --local` turns into its per-epoch console line
    (pipelines/progress.py). After LogEpochSeconds, so the epoch's seconds are in the logs."""

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "epochs": self.params["epochs"],
                  **{key: float(value) for key, value in (logs or {}).items()}}
        print(f"{configs.EPOCH_MARKER} {json.dumps(record)}", flush=True)


class EpochFlushedTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard whose logs are on disk at each epoch's end (Keras leaves them to the
    writers' 2-minute flush), so the copy MirrorState makes is up to date."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():  # Keras 3 keeps its writers there.
            writer.flush()


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's, but a backup whose epoch file (training_metadata.json) a kill left empty falls
    back to the previous backup too: Keras does that only for an OSError (a torn weights
    file), and rewriting that JSON truncates it first, so a kill in between left a run that
    could not resume (JSONDecodeError, seen once in CI)."""

    def _load_model(self):
        try:
            super()._load_model()
        except json.JSONDecodeError as error:
            raise OSError(f"unreadable backup epoch file: {error}") from error


def make_callbacks(state_dir: str, options: FitOptions, best_val_loss: float | None,
                   adjustable_learning_rate: bool,
                   tensorboard_dir: str | None) -> list[keras.callbacks.Callback]:
    """BackupAndRestore and the CSV history live in state_dir (a local folder), so a killed
    process started again resumes after its last completed epoch; the best checkpoint lives
    there too."""
    plateau = ([keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.2,
                                                  patience=options.reduce_lr_patience,
                                                  min_lr=1e-7)]
               if adjustable_learning_rate else [])
    tensorboard = [EpochFlushedTensorBoard(tensorboard_dir)] if tensorboard_dir else []
    # Order matters at each epoch's end: the history row and the best checkpoint are written
    # before the backup, so a kill in between repeats that epoch rather than losing it.
    return [
        LogLearningRate(),
        LogEpochSeconds(),
        PrintEpochMarker(),
        keras.callbacks.CSVLogger(str(Path(state_dir, HISTORY_CSV)), append=True),
        # One file per improvement, so a kill while writing one spoils only that one.
        keras.callbacks.ModelCheckpoint(str(Path(state_dir, BEST_WEIGHTS)), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_val_loss),
        # double_checkpoint: a backup spoilt by a kill mid-write falls back to the one before.
        BackupAndRestore(str(Path(state_dir, BACKUP)), double_checkpoint=True),
        keras.callbacks.EarlyStopping(monitor="val_loss",
                                      patience=options.early_stopping_patience),
        TargetAccuracyStop(options.target_accuracy),
    ] + plateau + tensorboard


HISTORY_CSV = "history.csv"
BEST_WEIGHTS = "best-{epoch:04d}.weights.h5"
BACKUP = "backup"
# In a bucket: one snapshot of the backup and history per completed epoch, complete once its
# marker exists (written last); tensorboard/ mirrors the TensorBoard logs.
SNAPSHOT = "epoch-{epoch:04d}"
SNAPSHOT_COMPLETE = "complete"
REMOTE_TENSORBOARD = "tensorboard"


def state_location(artifact_uri: str, artifact_path: str) -> str:
    """Where a step keeps its resumable state: beside its output artifact, in the bucket for a
    cluster's pipeline root (gs://, s3://, or minio:// as s3://), so a retried pod on another
    node finds it; beside the local path in local runs."""
    uri = storage.from_artifact_uri(artifact_uri)
    return (uri if storage.is_remote(uri) else artifact_path) + ".state"


class _ChangedFiles:
    """Tells which files under a folder are new or changed since last asked (size, mtime)."""

    def __init__(self, root: str):
        self.root = Path(root)
        self.seen: dict[Path, tuple[int, int]] = {}

    def __call__(self, pattern: str) -> list[Path]:
        changed = []
        for path in sorted(self.root.glob(pattern)):
            stat = path.stat()
            if path.is_file() and self.seen.get(path) != (stat.st_size, stat.st_mtime_ns):
                self.seen[path] = (stat.st_size, stat.st_mtime_ns)
                changed.append(path)
        return changed


class MirrorState(keras.callbacks.Callback):
    """Copies the local training state to a bucket after each epoch (last in the callback
    list: after the backup and the TensorBoard writer), through components/storage.py: new
    best checkpoints and TensorBoard logs, then the epoch's snapshot (backup and history),
    whose marker goes up last, then the older snapshots are removed. Uploaded objects appear
    whole or not at all, so a kill at any point leaves the last complete snapshot readable."""

    def __init__(self, state_dir: str, remote: str, tensorboard_dir: str | None,
                 snapshots: list[str]):
        super().__init__()
        self.state_dir, self.remote, self.tensorboard_dir = state_dir, remote, tensorboard_dir
        self.snapshots = snapshots  # Remote snapshot names to remove once a newer is complete.
        self.changed_state = _ChangedFiles(state_dir)
        self.changed_state("best-*")  # What restore_state brought is there already.
        self.changed_logs = _ChangedFiles(tensorboard_dir) if tensorboard_dir else None
        if self.changed_logs:
            self.changed_logs("**/*")

    def on_epoch_end(self, epoch, logs=None):
        for path in self.changed_state("best-*"):
            storage.upload_file(path, storage.join(self.remote, path.name))
        if self.changed_logs:
            for path in self.changed_logs("**/*"):
                storage.upload_file(path, storage.join(
                    self.remote, REMOTE_TENSORBOARD,
                    path.relative_to(self.tensorboard_dir).as_posix()))
        snapshot = SNAPSHOT.format(epoch=epoch + 1)
        root = Path(self.state_dir)
        # The backup's own previous copy (*.bkp) is not needed: the previous snapshot is it.
        backup = [path for path in sorted((root / BACKUP).iterdir()) if path.suffix != ".bkp"]
        for path in [root / HISTORY_CSV, *backup]:
            storage.upload_file(path, storage.join(self.remote, snapshot,
                                                   path.relative_to(root).as_posix()))
        storage.write_bytes(storage.join(self.remote, snapshot, SNAPSHOT_COMPLETE), b"")
        for old in self.snapshots:
            storage.delete_tree(storage.join(self.remote, old))
        self.snapshots = [snapshot]


def restore_state(remote: str, state_dir: str, tensorboard_dir: str | None) -> list[str]:
    """Brings the state a killed run left in a bucket into the local state_dir: its best
    checkpoints, its newest complete snapshot, its TensorBoard logs into tensorboard_dir.
    Returns the names of every snapshot there, complete or not."""
    files = storage.list_files(remote)
    names = [uri[len(remote.rstrip("/")) + 1:] for uri in files]
    snapshots = sorted({name.split("/")[0] for name in names
                        if re.fullmatch(r"epoch-\d+/.+", name)})
    complete = [s for s in snapshots if f"{s}/{SNAPSHOT_COMPLETE}" in names]
    newest = max(complete, key=lambda s: int(s.split("-")[1]), default=None)
    for uri, name in zip(files, names):
        if name.startswith("best-"):
            storage.download_file(uri, Path(state_dir, name))
        elif newest and name.startswith(newest + "/") and name != f"{newest}/{SNAPSHOT_COMPLETE}":
            storage.download_file(uri, Path(state_dir, name[len(newest) + 1:]))
        elif tensorboard_dir and name.startswith(REMOTE_TENSORBOARD + "/"):
            storage.download_file(uri, Path(tensorboard_dir,
                                            name[len(REMOTE_TENSORBOARD) + 1:]))
    return snapshots


def load_best_weights(model: keras.Model, state_dir: str) -> None:
    """Loads the newest readable best-epoch checkpoint, if any."""
    for path in sorted(Path(state_dir).glob("best-*.weights.h5"), reverse=True):
        try:
            model.load_weights(path)
            return
        except (OSError, ValueError) as error:
            print(f"skipping unreadable checkpoint {path}: {error}", flush=True)


def read_csv_history(path: str | Path) -> dict:
    """The CSVLogger file as {metric: [values]}, 'epoch' 1-based; a repeated epoch (logged,
    then killed before its backup) keeps its last row."""
    if not Path(path).exists():
        return {}
    with open(path) as f:
        rows = {int(row["epoch"]): row for row in csv.DictReader(f)}
    history: dict[str, list] = {"epoch": [epoch + 1 for epoch in sorted(rows)]}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if key != "epoch":
                history.setdefault(key, []).append(float(value))
    return history


def _mirrored(state_dir: str) -> bool:
    """Whether training keeps its state in a local temporary folder that MirrorState copies to
    state_dir: for a bucket, and under several processes (components/distributed.py), where
    every process restores from state_dir but only the chief writes there."""
    return storage.is_remote(state_dir) or distributed.current()[1] > 1


@contextlib.contextmanager
def _local_state(state_dir: str) -> Iterator[str]:
    """The local folder training writes its state to: state_dir itself, or when _mirrored a
    temporary folder."""
    if not _mirrored(state_dir):
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        yield state_dir
        return
    with tempfile.TemporaryDirectory(prefix="tlp-state-") as local:
        yield local


def split_batch_sizes(metadata: dict, options: FitOptions) -> tuple[int, int]:
    """The train and validation batch sizes on the current replicas (see
    accelerators.replica_batch_size)."""
    return tuple(accelerators.replica_batch_size(options.batch_size,
                                                 metadata["num_examples"][split], split)
                 for split in ("train", "validation"))


def fit(model: keras.Model, dataset_dir: str, options: FitOptions, learning_rate: float,
        state_dir: str, initial_epoch: int = 0, best_val_loss: float | None = None,
        tensorboard_dir: str | None = None) -> dict:
    """Fits the model on the images of the train split, validating on the validation split:
    fit_datasets over tfrecords.load_split's datasets. Returns the history."""
    metadata = tfrecords.read_metadata(dataset_dir)
    binary = model_lib.is_binary(metadata["num_classes"])
    train_batch, validation_batch = split_batch_sizes(metadata, options)
    train = tfrecords.load_split(dataset_dir, "train", train_batch, training=True,
                                 cache_budget_mb=options.cache_budget_mb, seed=options.seed,
                                 binary=binary)
    validation = tfrecords.load_split(dataset_dir, "validation", validation_batch,
                                      training=False, cache_budget_mb=options.cache_budget_mb,
                                      binary=binary)
    return fit_datasets(model, train, validation, metadata, options, learning_rate, state_dir,
                        initial_epoch, best_val_loss, tensorboard_dir)


def fit_datasets(model: keras.Model, train, validation, metadata: dict, options: FitOptions,
                 learning_rate: float, state_dir: str, initial_epoch: int = 0,
                 best_val_loss: float | None = None,
                 tensorboard_dir: str | None = None) -> dict:
    """Compiles the model with the options' optimizer, schedule and loss, fits on `train`
    (batches of (inputs, label): images, or cached features for a head model), validating on
    `validation`, and ends with the weights of the epoch with the lowest val_loss. metadata:
    the dataset's (class count, train counts for class weights). When best_val_loss is given
    (fine-tuning), the incoming weights count as a candidate with that loss, so the result is
    never worse on validation than the model that came in. A run killed part-way and started
    again with the same state_dir (a local folder, or a gs:// or s3:// prefix) resumes after
    its last completed epoch. Under several processes each runs this alike (the same
    callbacks, on its own local state); only the chief writes to state_dir. Returns the
    history (absolute epochs)."""
    num_classes = metadata["num_classes"]
    rate = learning_rate_schedule(learning_rate, options.lr_schedule, len(train),
                                  options.epochs, options.warmup_epochs)
    model_lib.compile_model(model, num_classes, rate, options.optimizer,
                            options.label_smoothing, options.steps_per_execution)
    weights = class_weights(list(metadata["counts"]["train"].values()), options.class_weighting)
    if weights:
        print(f"class weights: {weights}", flush=True)
    remote = state_dir if _mirrored(state_dir) else None
    chief = distributed.is_chief()
    with _local_state(state_dir) as local:
        snapshots = restore_state(remote, local, tensorboard_dir) if remote else []
        done = read_csv_history(Path(local, HISTORY_CSV))
        if done:
            print(f"resuming from {state_dir}: {len(done['epoch'])} epoch(s) already done",
                  flush=True)
        elif best_val_loss is not None:
            model.optimizer.build(model.trainable_variables)  # So it reloads cleanly.
            model.save_weights(str(Path(local, BEST_WEIGHTS.format(epoch=initial_epoch))))
        candidates = done.get("val_loss", []) + ([] if best_val_loss is None
                                                 else [best_val_loss])
        callbacks = make_callbacks(local, options, min(candidates, default=None),
                                   isinstance(rate, float), tensorboard_dir)
        if remote and chief:
            callbacks.append(MirrorState(local, remote, tensorboard_dir, snapshots))
        print(device_feed.describe(), flush=True)
        # The dataset shuffles itself; DeviceFeed applies the class weights.
        model.fit(device_feed.DeviceFeed(train, weights),
                  validation_data=device_feed.DeviceFeed(validation),
                  epochs=initial_epoch + options.epochs, initial_epoch=initial_epoch,
                  verbose=2, shuffle=False, callbacks=callbacks)
        load_best_weights(model, local)
        history = read_csv_history(Path(local, HISTORY_CSV))
    # Finished: nothing left to resume.
    if remote and chief:
        storage.delete_tree(remote)
    elif not remote:
        shutil.rmtree(state_dir)
    return history


def fit_head_on_features(model: keras.Model, dataset_dir: str, views: int,
                         options: FitOptions, learning_rate: float, state_dir: str,
                         tensorboard_dir: str | None = None) -> dict:
    """The train step's head phase on cached features (components/features.py): the frozen
    backbone runs once over `views` augmented views of the train split and once over the
    validation split, then the head, sharing the model's weights, trains on those features
    with fit_datasets (same compile, callbacks, resume). A resumed run extracts the features
    again (deterministic for the seed) and carries on from its backup. Returns the history."""
    metadata = tfrecords.read_metadata(dataset_dir)
    binary = model_lib.is_binary(metadata["num_classes"])
    train_batch, validation_batch = split_batch_sizes(metadata, options)
    head = features.head_model(model)
    with features.feature_folder() as folder:
        cached = features.extract(model, dataset_dir, views, train_batch, validation_batch,
                                  options.cache_budget_mb, folder)
        print(features.describe(cached), flush=True)
        train = features.train_dataset(cached, train_batch, options.seed, binary)
        validation = features.validation_dataset(cached, validation_batch, binary)
        history = fit_datasets(head, train, validation, metadata, options, learning_rate,
                               state_dir, tensorboard_dir=tensorboard_dir)
    # The full model, saved by the caller, carries the same loss, metric and optimizer (its
    # trainable variables are the head's, in the same order).
    model.compile(optimizer=head.optimizer, loss=head.loss,
                  metrics=model_lib.loss_and_metric(metadata["num_classes"],
                                                    options.label_smoothing)[1:],
                  steps_per_execution=options.steps_per_execution)
    return history


def best_val_loss(history: dict) -> float:
    return min(history["val_loss"])


def save_history(history: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(history, indent=2))


def load_history(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def train(dataset_dir: str, model_path: str, history_path: str, backbone: str, weights: str,
          head: model_lib.Head, augmentation: model_lib.Augmentation,
          learning_rate: float, options: FitOptions, state_dir: str,
          tensorboard_dir: str | None = None, initial_model_path: str | None = None,
          head_feature_views: int = configs.HEAD_FEATURE_VIEWS) -> dict:
    """The train step: new head on the frozen pretrained backbone. The model as built, before
    any training, goes to initial_model_path when given (the evaluate step's "before").
    head_feature_views > 0 (and a pretrained, so frozen, backbone): the head trains on
    cached backbone features of that many augmented views of each train image
    (fit_head_on_features); 0: end-to-end on the images, augmented afresh each epoch."""
    accelerators.configure(options.mixed_precision)  # First: before TensorFlow starts.
    keras.utils.set_random_seed(options.seed)
    metadata = tfrecords.read_metadata(dataset_dir)
    with accelerators.distribution_scope():
        model = model_lib.build_model(metadata["num_classes"], backbone,
                                      metadata["image_size"], weights, head, augmentation)
        if weights == "none":  # Nothing learnt to keep: every layer learns from scratch.
            model_lib.backbone_of(model).trainable = True
            print("train: weights=none: training every backbone layer from scratch",
                  flush=True)
            if head_feature_views:
                print(f"train: head_feature_views={head_feature_views} ignored: the backbone "
                      "trains, so its features change every step; training end-to-end on "
                      "the images", flush=True)
                head_feature_views = 0
        elif head_feature_views and distributed.current()[1] > 1:
            print(f"train: head_feature_views={head_feature_views} ignored over several "
                  "nodes: the head trains end-to-end on the images", flush=True)
            head_feature_views = 0
        elif (head_feature_views > 1
              and "augmentation" not in [layer.name for layer in model.layers]):
            print(f"train: head_feature_views={head_feature_views}: no augmentation is on, "
                  "so every view would be the same: extracting 1", flush=True)
            head_feature_views = 1
        model.summary(print_fn=lambda line, **_: print(line, flush=True))
        if initial_model_path:
            model.save(initial_model_path)
        if head_feature_views:
            history = fit_head_on_features(model, dataset_dir, head_feature_views, options,
                                           learning_rate, state_dir, tensorboard_dir)
        else:
            history = fit(model, dataset_dir, options, learning_rate, state_dir,
                          tensorboard_dir=tensorboard_dir)
    model.save(model_path)
    save_history(history, history_path)
    return history


def fine_tune(dataset_dir: str, model_in: str, history_in: str, model_path: str,
              history_path: str, layers: str, learning_rate: float,
              options: FitOptions, state_dir: str, tensorboard_dir: str | None = None,
              similarity: str = configs.DOMAIN_SIMILARITY) -> dict:
    """The fine_tune step: unfreeze the top backbone layers (`layers`: a count, a fraction,
    'all', a layer name, or 'auto': chosen from the dataset's size and `similarity`),
    recompile with a low learning rate and continue the epoch count of the train step."""
    accelerators.configure(options.mixed_precision)  # First: before TensorFlow starts.
    keras.utils.set_random_seed(options.seed)
    if layers == "auto":
        counts = list(tfrecords.read_metadata(dataset_dir)["counts"]["train"].values())
        layers = model_lib.auto_unfreeze(counts, similarity)
        print(f"fine_tune: auto: {min(counts)} or more train images per class, domain "
              f"{similarity}: unfreezing {layers}", flush=True)
    previous = load_history(history_in)
    with accelerators.distribution_scope():
        model = keras.models.load_model(model_in, compile=False)
        base = model_lib.backbone_of(model)
        trainable = model_lib.unfreeze_top_layers(model,
                                                  model_lib.layers_to_unfreeze(base, layers))
        print(f"fine_tune: {model_lib.describe_unfrozen(base, trainable)} "
              "(BatchNorm stays frozen)", flush=True)
        history = fit(model, dataset_dir, options, learning_rate, state_dir,
                      initial_epoch=previous["epoch"][-1],
                      best_val_loss=best_val_loss(previous), tensorboard_dir=tensorboard_dir)
    model.save(model_path)
    save_history(history, history_path)
    return history


def train_from_parameters(parameters: dict, dataset_dir: str, model_path: str,
                          history_path: str, state_dir: str,
                          tensorboard_dir: str | None = None,
                          initial_model_path: str | None = None) -> dict:
    """train() with its settings given as the train step's pipeline parameters (by name)."""
    return train(dataset_dir, model_path, history_path, parameters["backbone"],
                 parameters["weights"], model_lib.Head.from_parameters(parameters),
                 model_lib.Augmentation.from_parameters(parameters),
                 parameters["learning_rate"], FitOptions.from_parameters(parameters),
                 state_dir, tensorboard_dir, initial_model_path,
                 parameters["head_feature_views"])


def fine_tune_from_parameters(parameters: dict, dataset_dir: str, model_in: str,
                              history_in: str, model_path: str, history_path: str,
                              state_dir: str, tensorboard_dir: str | None = None) -> dict:
    """fine_tune() with its settings given as the fine_tune step's pipeline parameters."""
    options = FitOptions.from_parameters({**parameters,
                                          "epochs": parameters["fine_tune_epochs"]})
    return fine_tune(dataset_dir, model_in, history_in, model_path, history_path,
                     parameters["fine_tune_layers"], parameters["fine_tune_learning_rate"],
                     options, state_dir, tensorboard_dir, parameters["domain_similarity"])


def run_trial(parameters: dict, dataset_dir: str, state_dir: str,
              train_fraction: float = 1.0) -> tuple[dict, dict]:
    """One tuning trial: train then fine_tune, as the steps do, with these parameters (the
    trial's epochs among them), on a seeded share train_fraction of each class of the train
    split; the models stay in a temporary folder. Each phase keeps its resumable state under
    state_dir, so a retried trial resumes like train does. Returns the two histories."""
    with tempfile.TemporaryDirectory(prefix="tlp-trial-") as work:
        if train_fraction < 1:
            dataset_dir = str(tfrecords.write_subset(dataset_dir, Path(work, "data"), "train",
                                                     train_fraction, parameters["seed"]))
        model, history = str(Path(work, "train.keras")), str(Path(work, "train.json"))
        trained = train_from_parameters(parameters, dataset_dir, model, history,
                                        storage.join(state_dir, "train"))
        if not parameters["fine_tune_epochs"]:
            return trained, {}
        tuned = fine_tune_from_parameters(parameters, dataset_dir, model, history,
                                          str(Path(work, "tuned.keras")),
                                          str(Path(work, "tuned.json")),
                                          storage.join(state_dir, "fine_tune"))
    return trained, tuned
