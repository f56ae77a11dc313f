"""components/device_feed.py: batches copied to the device by a background thread, in order,
errors raised where they are read, and the same training on JAX as Keras's own feed."""
import json
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from components import device_feed


def numpy_batches(count: int):
    for index in range(count):
        yield np.full((2, 3), index, np.float32), np.array([index, index])


def test_batches_arrive_on_the_device_in_order():
    batches = list(device_feed.on_device_ahead(numpy_batches(7), depth=2))
    assert len(batches) == 7
    for index, (images, labels) in enumerate(batches):
        assert isinstance(images, jax.Array) and isinstance(labels, jax.Array)
        assert images.devices() == {jax.devices()[0]}
        np.testing.assert_array_equal(images, np.full((2, 3), index))


def test_a_reading_error_is_raised_to_the_consumer():
    def failing():
        yield from numpy_batches(2)
        raise OSError("shard-00001-of-00002.tfrecord: truncated record")

    feed = device_feed.on_device_ahead(failing())
    assert len([next(feed), next(feed)]) == 2
    with pytest.raises(OSError, match="truncated record"):
        next(feed)


def feed_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "tlp-device-feed"]


def test_leaving_early_stops_the_thread():
    """fit may stop mid-epoch (steps_per_epoch, a callback): the thread must not stay
    blocked holding batches on the device."""
    feed = device_feed.on_device_ahead(numpy_batches(1000), depth=2)
    next(feed)
    assert feed_threads()
    feed.close()
    deadline = time.monotonic() + 5
    while feed_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not feed_threads()


def test_class_weights_become_sample_weights():
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 2), np.float32), np.array([0, 1, 1, 0]))).batch(4)
    (_, labels, sample_weights), = device_feed.DeviceFeed(
        dataset, {0: 0.5, 1: 2.0}).get_numpy_iterator()
    np.testing.assert_allclose(sample_weights, [0.5, 2.0, 2.0, 0.5])


JAX_FIT_SCRIPT = """
import json
import keras, numpy as np, tensorflow as tf
from components import device_feed


def history(fed: bool) -> dict:
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((64, 8), np.float32)
    labels = (images.sum(axis=1) > 4).astype(np.int64)
    train = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    weights = {0: 1.0, 1: 3.0}
    if fed:
        return model.fit(device_feed.DeviceFeed(train, weights),
                         validation_data=device_feed.DeviceFeed(train.take(2)),
                         epochs=3, verbose=0).history
    return model.fit(train, validation_data=train.take(2), class_weight=weights, epochs=3,
                     verbose=0).history


print(device_feed.describe())
print(json.dumps({"backend": keras.backend.backend(), "fed": history(True),
                  "keras": history(False)}))
"""


def test_jax_trains_on_the_feed_as_on_the_dataset():
    """A JAX fit fed by DeviceFeed (class weights and validation data included) gives the
    history of one fed the dataset directly."""
    result = subprocess.run([sys.executable, "-c", JAX_FIT_SCRIPT], capture_output=True,
                            text=True, env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    *_, description, line = result.stdout.strip().splitlines()
    assert description == ("input: tf.data batches copied to the device by a background "
                           "thread, up to 3 ahead of the step")
    run = json.loads(line)
    assert run["backend"] == "jax"
    assert set(run["fed"]) == {"loss", "val_loss"}
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(run["fed"][key], run["keras"][key], rtol=1e-5)
