"""TFRecord files of tf.train.Example records, written without TensorFlow.

The preprocess workers serialize and frame each image's record themselves, so they never
import TensorFlow (seconds per process, and not safe in a forked child once it runs) and the
shard writers only copy bytes. The bytes are tf.train.Example's wire format
(tensorflow/core/example/example.proto) with tensorflow/models' tfrecord_lib feature keys,
framed as tensorflow/core/lib/io/record_writer.cc does; tests/test_tfrecords.py reads them
back with TensorFlow.
"""
import struct
from collections.abc import Iterable
from pathlib import Path

import google_crc32c

from components import configs


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list.value


def _int_feature(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"only non-negative int64 features are written, not {value}")
    return _field(3, _field(1, _varint(value)))  # Feature.int64_list.value, packed


def serialize_example(encoded: bytes, label: int, label_text: str, filename: str,
                      sha256: str, image_size: int,
                      image_format: str = configs.IMAGE_FORMAT) -> bytes:
    """A serialized tf.train.Example of one image, encoded as image_format says."""
    features = {
        configs.KEY_ENCODED: _bytes_feature(encoded),
        configs.KEY_FORMAT: _bytes_feature(image_format.encode()),
        configs.KEY_LABEL: _int_feature(label),
        configs.KEY_LABEL_TEXT: _bytes_feature(label_text.encode()),
        configs.KEY_FILENAME: _bytes_feature(filename.encode()),
        configs.KEY_SHA256: _bytes_feature(sha256.encode()),
        configs.KEY_HEIGHT: _int_feature(image_size),
        configs.KEY_WIDTH: _int_feature(image_size),
    }
    # Example.features (1) -> Features.feature (1): map entries of key (1) and value (2).
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, value))
                       for key, value in features.items())
    return _field(1, entries)


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)


def frame(record: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
    length = struct.pack("<Q", len(record))
    return length + _masked_crc(length) + record + _masked_crc(record)


def write_file(path: Path, framed_records: Iterable[bytes]) -> None:
    """Writes under a temporary name and renames, so a killed run leaves no finished-looking
    half file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        for record in framed_records:
            out.write(record)
    partial.replace(path)
