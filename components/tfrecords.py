"""The tf.data input pipeline that train, fine_tune and evaluate share, over the TFRecord
shards the preprocess step writes (components/tfrecord_writer.py)."""
import json
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from components import configs, distributed

_FEATURES = {
    configs.KEY_ENCODED: tf.io.FixedLenFeature([], tf.string),
    configs.KEY_LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def read_metadata(dataset_dir: str | Path) -> dict:
    return json.loads((Path(dataset_dir) / configs.METADATA_FILE).read_text())


def shard_files(dataset_dir: str | Path, split: str, metadata: dict | None = None) -> list[str]:
    """The split's shard paths; pass the metadata when already read."""
    metadata = metadata or read_metadata(dataset_dir)
    return [str(Path(dataset_dir) / name) for name in metadata["shards"][split]]


def write_subset(dataset_dir: str | Path, out_dir: str | Path, split: str, fraction: float,
                 seed: int) -> Path:
    """A dataset at out_dir whose `split` is a seeded share `fraction` of each class of
    dataset_dir's (at least one image each), in one shard; its other splits are
    dataset_dir's own shards (by absolute path). Tuning's early rounds train on it."""
    metadata = read_metadata(dataset_dir)
    source = Path(dataset_dir).resolve()
    files = shard_files(source, split, metadata)
    labels = np.fromiter(tf.data.TFRecordDataset(files).batch(1024).map(
        lambda records: tf.io.parse_example(
            records, {configs.KEY_LABEL: _FEATURES[configs.KEY_LABEL]})[configs.KEY_LABEL]
    ).unbatch().as_numpy_iterator(), dtype=np.int64)
    rng = np.random.default_rng(seed)
    kept: set[int] = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        kept.update(rng.choice(members, max(1, round(len(members) * fraction)),
                               replace=False).tolist())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = f"{split}-subset.tfrecord"
    with tf.io.TFRecordWriter(str(out_dir / shard)) as writer:
        for index, record in enumerate(tf.data.TFRecordDataset(files).as_numpy_iterator()):
            if index in kept:
                writer.write(record)
    names = metadata["class_names"]
    counts = np.bincount(labels[sorted(kept)], minlength=len(names))
    subset = {**metadata,
              "shards": {name: [shard] if name == split else shard_files(source, name, metadata)
                         for name in metadata["shards"]},
              "num_examples": {**metadata["num_examples"], split: len(kept)},
              "counts": {**metadata["counts"],
                         split: {n: int(c) for n, c in zip(names, counts)}}}
    (out_dir / configs.METADATA_FILE).write_text(json.dumps(subset, indent=2))
    return out_dir


def decode_batch(serialized: tf.Tensor, image_size: int,
                 image_format: str) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of records -> (uint8 images, labels). Parsing a batch at once and decoding its
    JPEGs in one op costs about a third less CPU per image than one record at a time, whose
    per-element overhead in tf.data was as large as the decoding."""
    parsed = tf.io.parse_example(serialized, _FEATURES)
    encoded, shape = parsed[configs.KEY_ENCODED], [image_size, image_size, 3]
    if image_format == "raw":
        pixels = tf.io.decode_raw(encoded, tf.uint8, fixed_length=math.prod(shape))
        return tf.reshape(pixels, [-1, *shape]), parsed[configs.KEY_LABEL]
    # Up to a default batch's worth of images decoded at once (one at a time was slower).
    images = tf.map_fn(lambda jpeg: tf.ensure_shape(tf.io.decode_jpeg(jpeg, channels=3), shape),
                       encoded, fn_output_signature=tf.TensorSpec(shape, tf.uint8),
                       parallel_iterations=configs.BATCH_SIZE)
    return images, parsed[configs.KEY_LABEL]


def load_split(dataset_dir: str | Path, split: str, batch_size: int, *, training: bool,
               cache_budget_mb: int = configs.CACHE_BUDGET_MB, seed: int | None = None,
               binary: bool = False) -> tf.data.Dataset:
    """Batches of (uint8 image, label): the model casts to float32 itself (Keras casts inputs
    to its Input's dtype), on the accelerator, so the CPU never writes 4-byte pixels and 4x
    fewer bytes go to the GPU. Shards are read in parallel; decoded
    images are cached in memory when the split fits the budget; training data is shuffled.
    Records are decoded a batch at a time, batches in parallel.

    Under several processes (components/distributed.py) batch_size is the global batch:
    each process reads its own shards (distributed.own_shards) in batches of batch_size /
    processes, repeated as needed so that every process yields the same number of whole
    batches, ceil(examples / batch_size), which the collective steps require."""
    metadata = read_metadata(dataset_dir)
    image_size, image_format = metadata["image_size"], metadata["image_format"]
    if image_format not in configs.IMAGE_FORMATS:
        raise ValueError(f"{Path(dataset_dir) / configs.METADATA_FILE}: image_format="
                         f"{image_format!r} is not one this version reads "
                         f"({', '.join(configs.IMAGE_FORMATS)}); preprocess the data again")
    index, count = distributed.current()
    files, by_record = distributed.own_shards(shard_files(dataset_dir, split, metadata), index,
                                              count)
    if count > 1:
        print(distributed.describe_shards(split, files, by_record, index, count), flush=True)
    batches = math.ceil(metadata["num_examples"][split] / batch_size)
    batch_size //= count
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    if by_record:
        dataset = dataset.shard(count, index)

    def decoded_batches(records: tf.data.Dataset) -> tf.data.Dataset:
        return records.batch(batch_size).map(
            lambda serialized: decode_batch(serialized, image_size, image_format),
            num_parallel_calls=tf.data.AUTOTUNE)

    decoded_mb = metadata["num_examples"][split] * image_size * image_size * 3 / 2**20
    cached = decoded_mb <= cache_budget_mb
    if cached:
        dataset = decoded_batches(dataset).unbatch().cache()
    if training:
        # Uncached, the buffer holds encoded records, not decoded images (about 16x smaller,
        # far less memory churn): decoding after shuffling takes a third less CPU.
        dataset = dataset.shuffle(min(metadata["num_examples"][split], 10_000), seed=seed,
                                  reshuffle_each_iteration=True)
    if count > 1:  # Whole batches only, as many on every process: see above.
        dataset = dataset.repeat()
    # Batching copies every image once: in parallel, or it alone caps a GPU's feed; in
    # order, so that a seeded run stays reproducible.
    dataset = (dataset.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
               if cached else decoded_batches(dataset))
    if binary:
        dataset = dataset.map(lambda image, label: (image, tf.cast(label, tf.float32)[:, None]),
                              num_parallel_calls=tf.data.AUTOTUNE)
    # A known length lets Keras show progress and end epochs without a warning.
    dataset = (dataset.take(batches) if count > 1
               else dataset.apply(tf.data.experimental.assert_cardinality(batches)))
    return dataset.prefetch(tf.data.AUTOTUNE)
