"""How train and fine_tune hand their tf.data batches to Keras's fit.

On JAX, Keras's fit loop pulls each batch from tf.data, converts it to NumPy and copies it to
the device, all in the thread that also dispatches the train steps: on an H200 that loop fed
a frozen MobileNetV2 at 0.5-0.65 of the rate of the same jitted step over a batch already on
the device (README, GPU benchmark). DeviceFeed moves that work to a background thread that
keeps a few batches on the device ahead of the step. On TensorFlow nothing changes: Keras
feeds the tf.data dataset to its tf.function as before.

DeviceFeed builds on Keras's own adapter for tf.data (keras.src, not public API): fit takes
a DataAdapter as its input as is, so class weights are applied here, not by fit.
"""
import queue
import threading
from collections.abc import Iterator

import keras
from keras.src.trainers.data_adapters.tf_dataset_adapter import TFDatasetAdapter

from components import configs

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def on_device_ahead(batches: Iterator, depth: int = configs.DEVICE_FEED_DEPTH) -> Iterator:
    """The batches of `batches` (NumPy trees), each already copied to JAX's default device,
    read and copied by a background thread that stays up to `depth` batches ahead. An error
    while reading is raised here; closing this iterator stops the thread."""
    import jax

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not hand_over(jax.tree.map(jax.device_put, batch)):
                    return
            hand_over(_END)
        except BaseException as error:  # noqa: BLE001 -- raised again in the consumer.
            hand_over(_Failed(error))

    thread = threading.Thread(target=produce, name="tlp-device-feed", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()


def describe() -> str:
    """What DeviceFeed does on this process's backend, for the step's log."""
    if keras.backend.backend() != "jax":
        return "input: tf.data batches fed to the compiled step by Keras"
    if keras.distribution.distribution() is not None:
        return "input: tf.data batches laid out over the devices by Keras's distribution"
    return (f"input: tf.data batches copied to the device by a background thread, up to "
            f"{configs.DEVICE_FEED_DEPTH} ahead of the step")


class DeviceFeed(TFDatasetAdapter):
    """A tf.data dataset as fit's input (and validation_data): on JAX without a
    keras.distribution, its batches reach the device from a background thread
    (on_device_ahead); otherwise exactly Keras's own handling of a tf.data dataset."""

    def __init__(self, dataset, class_weight: dict[int, float] | None = None):
        # As keras's get_data_adapter makes it for a tf.data dataset: the current
        # distribution shards the dataset over processes.
        super().__init__(dataset, class_weight=class_weight,
                         distribution=keras.distribution.distribution())

    def get_jax_iterator(self) -> Iterator:
        batches = super().get_jax_iterator()
        if keras.distribution.distribution() is not None:
            return batches  # Keras lays each batch out over the devices itself.
        return on_device_ahead(batches)
