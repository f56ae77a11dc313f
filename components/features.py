"""The train step's head phase on cached features: with the backbone frozen, run it once over
the validation split and over K augmented views of the train split, keep the pooled (or
flattened) features in memory or on local disk, and train the head alone on them.

The head model reuses the full model's own head layers (shared weights), so training it
trains the full model: nothing is copied back."""
import contextlib
import itertools
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from components import model as model_lib, tfrecords

# Features held by one predict call while extracting: bounds the memory extraction needs
# whatever the split's size (Keras's predict keeps every output of a call until it returns).
EXTRACT_CHUNK_MB = 256
# Most features the train split's shuffle buffer holds (read from disk, that buffer is the
# only copy in memory; cached, it still bounds the buffer for large flattened features).
SHUFFLE_BUFFER_MB = 256
SHUFFLE_BUFFER_MAX = 10_000  # As tfrecords.load_split's.
RECORD_DTYPE = np.float32


class FeatureExtractor(keras.Model):
    """A full model's augmentation, backbone preprocessing, frozen backbone (inference mode)
    and pooling layer: (images, augment) -> features, where augment, one flag per image,
    applies the augmentation (training=True, whatever predict passes). One compiled function
    thus serves the augmented train views and the unaugmented validation split: tracing a
    second one cost about as much as extracting 200 images on the demo's CPU."""

    def __init__(self, model: keras.Model, **kwargs):
        super().__init__(**kwargs)
        names = [layer.name for layer in model.layers]
        self.augmentation = (model.get_layer("augmentation") if "augmentation" in names
                             else None)
        self.preprocessing = model.get_layer("preprocessing")
        self.backbone = model_lib.backbone_of(model)
        self.pooling = model_lib.head_layers(model)[0]

    def call(self, inputs):
        images, augment = inputs
        x = keras.ops.cast(images, "float32")
        if self.augmentation is not None:
            x = keras.ops.where(keras.ops.reshape(augment, (-1, 1, 1, 1)),
                                self.augmentation(x, training=True), x)
        x = model_lib.call_backbone(self.backbone, self.preprocessing(x), training=False)
        return keras.ops.cast(self.pooling(x), "float32")


def feature_shape(model: keras.Model) -> tuple[int, ...]:
    """The pooling layer's output shape, without the batch axis."""
    return tuple(model_lib.head_layers(model)[0].output.shape[1:])


def head_model(model: keras.Model) -> keras.Model:
    """The full model's head after its pooling layer, over an Input of the feature shape,
    made of the same layer objects: its weights are the full model's."""
    inputs = keras.Input(feature_shape(model), name="features")
    x = inputs
    for layer in model_lib.head_layers(model)[1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


@dataclass(frozen=True)
class CachedFeatures:
    """Where extract() put the features: views (files of the train split, one per view, in
    the split's read order), validation (one file), the labels of each split in that order,
    and whether the datasets cache them in memory."""
    train_files: list[str]
    validation_file: str
    train_labels: np.ndarray
    validation_labels: np.ndarray
    shape: tuple[int, ...]
    in_memory: bool
    megabytes: float
    seconds: float

    @property
    def record_bytes(self) -> int:
        return math.prod(self.shape) * np.dtype(RECORD_DTYPE).itemsize


def _extract_split(extractor: FeatureExtractor, images: tf.data.Dataset, augment: bool,
                   path: Path, chunk_batches: int) -> np.ndarray:
    """Writes the features of every batch of `images` (augmented or not) to `path` (float32
    records, in order) and returns the labels, in the same order. At most one chunk of
    batches' features is in memory."""
    iterator = iter(images)
    labels = []
    with open(path, "wb") as out:
        while True:
            chunk = list(itertools.islice(iterator, chunk_batches))
            if not chunk:
                return np.concatenate(labels) if labels else np.zeros([0], np.int64)
            labels += [np.asarray(label) for _, label in chunk]
            inputs = [(np.asarray(image), np.full(len(image), augment)) for image, _ in chunk]
            features = model_lib.predict_batches(extractor, inputs)
            out.write(np.ascontiguousarray(features, RECORD_DTYPE).tobytes())


def extract(model: keras.Model, dataset_dir: str, views: int, train_batch: int,
            validation_batch: int, cache_budget_mb: int, folder: str) -> CachedFeatures:
    """Runs the backbone over `views` augmented views of the train split and once over the
    validation split (unaugmented), writing float32 features to files in `folder`. They are
    read into memory by the datasets when their total fits cache_budget_mb, else streamed
    from the files each epoch."""
    start = time.perf_counter()
    shape = feature_shape(model)
    record_bytes = math.prod(shape) * np.dtype(RECORD_DTYPE).itemsize
    metadata = tfrecords.read_metadata(dataset_dir)
    counts = metadata["num_examples"]
    megabytes = (views * counts["train"] + counts["validation"]) * record_bytes / 2**20
    extractor = FeatureExtractor(model, name="features")
    train_files, train_labels = [], None
    # Read in the same order every time (training=False: no shuffling, deterministic);
    # decoded images are cached for the next views when the split fits the budget.
    images = tfrecords.load_split(dataset_dir, "train", train_batch, training=False,
                                  cache_budget_mb=cache_budget_mb)
    for view in range(views):
        path = Path(folder, f"train-view-{view}.f32")
        labels = _extract_split(extractor, images, True, path,
                                _chunk_batches(train_batch, record_bytes))
        if train_labels is not None and not np.array_equal(labels, train_labels):
            raise RuntimeError("the train split was read in a different order for two views")
        train_files.append(str(path))
        train_labels = labels
    images = tfrecords.load_split(dataset_dir, "validation", validation_batch, training=False,
                                  cache_budget_mb=0)
    validation_file = Path(folder, "validation.f32")
    validation_labels = _extract_split(extractor, images, False, validation_file,
                                       _chunk_batches(validation_batch, record_bytes))
    return CachedFeatures(train_files, str(validation_file), train_labels, validation_labels,
                          shape, megabytes <= cache_budget_mb, megabytes,
                          time.perf_counter() - start)


def _chunk_batches(batch_size: int, record_bytes: int) -> int:
    return max(1, EXTRACT_CHUNK_MB * 2**20 // (batch_size * record_bytes))


def _records(path: str, features: CachedFeatures) -> tf.data.Dataset:
    return tf.data.FixedLengthRecordDataset(path, features.record_bytes)


def _decode(record: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    return tf.reshape(tf.io.decode_raw(record, tf.float32), shape)


def _finish(dataset: tf.data.Dataset, examples: int, batch_size: int,
            binary: bool) -> tf.data.Dataset:
    dataset = dataset.batch(batch_size)
    if binary:
        dataset = dataset.map(lambda x, label: (x, tf.cast(label, tf.float32)[:, None]),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return (dataset.apply(tf.data.experimental.assert_cardinality(
        math.ceil(examples / batch_size))).prefetch(tf.data.AUTOTUNE))


def train_dataset(features: CachedFeatures, batch_size: int, seed: int,
                  binary: bool = False) -> tf.data.Dataset:
    """Batches of (features, label): each epoch, every train image once, in one of its views
    chosen at random (a fresh choice each epoch), shuffled with the seed. In memory, the views
    are cached after the first epoch's read; on disk, every view file is read in step each
    epoch (sequential reads) and one view kept."""
    shape, views = features.shape, len(features.train_files)
    examples = len(features.train_labels)
    labels = tf.data.Dataset.from_tensor_slices(features.train_labels)
    files = tuple(_records(path, features) for path in features.train_files)
    dataset = tf.data.Dataset.zip((labels, files))
    if features.in_memory:
        dataset = dataset.cache()
    # Different choices each epoch, the same sequence of epochs in every run with this seed.
    choices = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)

    def pick(example, choice):
        label, records = example
        record = tf.gather(tf.stack(records), choice % views)
        return _decode(record, shape), label

    buffer = max(1, min(examples, SHUFFLE_BUFFER_MAX,
                        SHUFFLE_BUFFER_MB * 2**20 // features.record_bytes))
    dataset = (tf.data.Dataset.zip((dataset, choices))
               .map(pick, num_parallel_calls=tf.data.AUTOTUNE)
               .shuffle(buffer, seed=seed, reshuffle_each_iteration=True))
    return _finish(dataset, examples, batch_size, binary)


def validation_dataset(features: CachedFeatures, batch_size: int,
                       binary: bool = False) -> tf.data.Dataset:
    labels = tf.data.Dataset.from_tensor_slices(features.validation_labels)
    records = _records(features.validation_file, features)
    dataset = tf.data.Dataset.zip((records, labels)).map(
        lambda record, label: (_decode(record, features.shape), label),
        num_parallel_calls=tf.data.AUTOTUNE)
    if features.in_memory:
        dataset = dataset.cache()
    return _finish(dataset, len(features.validation_labels), batch_size, binary)


@contextlib.contextmanager
def feature_folder() -> Iterator[str]:
    """A local temporary folder for the feature files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tlp-features-") as folder:
        yield folder


def describe(features: CachedFeatures) -> str:
    views = len(features.train_files)
    size = ("x".join(str(n) for n in features.shape) if len(features.shape) > 1
            else str(features.shape[0]))
    where = "in memory" if features.in_memory else "on local disk"
    return (f"train: head on cached features: {views} augmented view(s) of "
            f"{len(features.train_labels)} train images + {len(features.validation_labels)} "
            f"validation, {size} features each, {where} ({features.megabytes:.1f} MB); "
            f"extraction {features.seconds:.1f} s")
