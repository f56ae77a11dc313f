import numpy as np
import pytest
import tensorflow as tf

from components import tfrecord_writer, tfrecords


def test_writer_without_tensorflow_writes_what_tensorflow_reads(tmp_path):
    jpeg = bytes(range(256)) * 600  # Over 2**14 bytes: lengths take several varint bytes.
    ours = tfrecord_writer.serialize_example(jpeg, 300, "Ankle_boot", "a.jpg", "ab" * 32, 4096)

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    assert tf.train.Example.FromString(ours) == tf.train.Example(
        features=tf.train.Features(feature={key: feature(value) for key, value in {
            "image/encoded": jpeg, "image/format": b"jpeg", "image/class/label": 300,
            "image/class/text": b"Ankle_boot", "image/filename": b"a.jpg",
            "image/key/sha256": b"ab" * 32, "image/height": 4096,
            "image/width": 4096}.items()}))
    path = tmp_path / "x.tfrecord"
    tfrecord_writer.write_file(path, [tfrecord_writer.frame(ours), tfrecord_writer.frame(b"")])
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == [ours, b""]
    assert not (tmp_path / "x.tfrecord.partial").exists()
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # TensorFlow checks the data's CRC.
    path.write_bytes(bytes(data))
    with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
        list(tf.data.TFRecordDataset(str(path)))


def test_round_trip_keeps_images_labels_and_features(tmp_path, image_folder):
    from components import preprocess

    out = tmp_path / "ds"
    preprocess.run(str(image_folder), str(out), str(tmp_path / "m.parquet"), 32, 0.6, 0.2, 0.2,
                   seed=3)
    records = list(tf.data.TFRecordDataset(tfrecords.shard_files(out, "test")))
    assert len(records) == 6
    example = tf.train.Example.FromString(records[0].numpy())
    features = example.features.feature
    assert features["image/format"].bytes_list.value == [b"jpeg"]
    assert features["image/height"].int64_list.value == [32]
    assert features["image/width"].int64_list.value == [32]
    label = features["image/class/label"].int64_list.value[0]
    assert features["image/class/text"].bytes_list.value[0].decode() == \
        ["blue", "green", "red"][label]
    assert features["image/filename"].bytes_list.value[0].endswith(b".png")
    assert len(features["image/key/sha256"].bytes_list.value[0]) == 64

    batches = list(tfrecords.load_split(out, "test", batch_size=4, training=False))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    # Each image keeps its class colour: red images are mostly red, and so on.
    for image, label in zip(images, labels):
        assert image.mean(axis=(0, 1)).argmax() == {0: 2, 1: 1, 2: 0}[label]


def test_binary_labels_are_float_columns(tiny_dataset):
    import json

    metadata = json.loads((tiny_dataset / "metadata.json").read_text())
    assert metadata["num_classes"] == 3
    _, labels = next(iter(tfrecords.load_split(tiny_dataset, "train", 4, training=True,
                                               binary=True)))
    assert labels.shape == (4, 1) and labels.dtype == tf.float32


def _images_by_label(dataset) -> list[tuple[int, bytes]]:
    """An epoch's (label, pixels) pairs, sorted: the same for any order."""
    return sorted((int(label), image.astype(np.uint8).tobytes()) for images, labels in dataset
                  for image, label in zip(images.numpy(), labels.numpy()))


@pytest.mark.parametrize("image_format", ["jpeg", "raw"])
def test_every_training_epoch_reads_each_image_once_cached_or_not(tmp_path, image_folder,
                                                                  image_format):
    from components import images, preprocess

    out = tmp_path / "ds"
    preprocess.run(str(image_folder), str(out), str(tmp_path / "m.parquet"), 32, 0.6, 0.2, 0.2,
                   seed=3, image_format=image_format)
    assert tfrecords.read_metadata(out)["image_format"] == image_format
    record = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(
        tfrecords.shard_files(out, "train")))).numpy())
    assert record.features.feature["image/format"].bytes_list.value == [image_format.encode()]

    epochs = {}
    for budget in (0, 100):  # Decoding after the shuffle, or from the cache.
        dataset = tfrecords.load_split(out, "train", 5, training=True, cache_budget_mb=budget,
                                       seed=0)
        first, second = list(dataset), list(dataset)
        assert [len(b[0]) for b in first] == [5, 5, 5, 3]  # 18 training images
        assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second))  # reshuffled
        epochs[budget] = _images_by_label(first)
        assert _images_by_label(second) == epochs[budget]
    assert epochs[0] == epochs[100]
    if image_format == "raw":  # Exactly the pixels the preprocess step made.
        options = images.EncodeOptions(32, image_format="raw")
        colours = {"blue": 0, "green": 1, "red": 2}
        made = sorted((colours[path.parent.name], images.encode_image(path.read_bytes(), options))
                      for path in image_folder.glob("*/*"))
        assert all(pair in made for pair in epochs[0])


def test_unknown_image_format_is_refused(tmp_path):
    from components import images

    with pytest.raises(ValueError, match="image_format='png'; choose one of jpeg, raw"):
        images.EncodeOptions(32, image_format="png")


def test_a_subset_keeps_a_seeded_share_of_each_class_and_shares_the_other_splits(
        tmp_path, tiny_dataset):
    def labels(dataset, split):
        return sorted(int(label) for _, batch in tfrecords.load_split(
            dataset, split, 4, training=False) for label in batch.numpy())

    full = tfrecords.read_metadata(tiny_dataset)
    subset = tfrecords.write_subset(tiny_dataset, tmp_path / "a", "train", 0.5, seed=1)
    metadata = tfrecords.read_metadata(subset)
    # 6 train images a class: 3 each; never fewer than one.
    assert list(metadata["counts"]["train"].values()) == [3, 3, 3]
    assert metadata["num_examples"]["train"] == 9
    assert labels(subset, "train") == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for split in ("validation", "test"):
        assert labels(subset, split) == labels(tiny_dataset, split)
        assert metadata["counts"][split] == full["counts"][split]
    tiny = tfrecords.write_subset(tiny_dataset, tmp_path / "b", "train", 0.01, seed=1)
    assert list(tfrecords.read_metadata(tiny)["counts"]["train"].values()) == [1, 1, 1]

    def records(dataset):
        return [r.numpy() for r in tf.data.TFRecordDataset(
            tfrecords.shard_files(dataset, "train"))]

    again = tfrecords.write_subset(tiny_dataset, tmp_path / "c", "train", 0.5, seed=1)
    other = tfrecords.write_subset(tiny_dataset, tmp_path / "d", "train", 0.5, seed=2)
    assert records(again) == records(subset) != records(other)
    assert set(records(subset)) <= set(records(tiny_dataset))
