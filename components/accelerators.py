"""GPU settings for the train and fine_tune steps: memory growth, mixed precision and
data parallelism over every visible GPU, on either Keras backend (TensorFlow or JAX). On a
CPU-only machine nothing changes."""
import contextlib
import functools

import keras
import tensorflow as tf

from components.errors import TlpError

MIXED_PRECISION_MODES = ("auto", "bfloat16", "float16", "off")


def choose_policy(mode: str, gpu_compute_capabilities: list[tuple[int, int]]) -> str:
    """The Keras dtype policy for `mode`. 'auto': mixed_bfloat16 where every GPU has
    bfloat16 tensor cores (compute capability 8.0, Ampere, or newer), mixed_float16 (with
    loss scaling, which Keras adds at compile) on older GPUs, float32 without a GPU."""
    if mode not in MIXED_PRECISION_MODES:
        raise TlpError(f"mixed_precision={mode!r}; choose one of "
                       f"{', '.join(MIXED_PRECISION_MODES)}.")
    if mode == "off" or not gpu_compute_capabilities:
        return "float32"
    if mode == "auto":
        mode = "bfloat16" if min(gpu_compute_capabilities) >= (8, 0) else "float16"
    return f"mixed_{mode}"


def _gpu_compute_capabilities() -> list[tuple[int, int]]:
    if keras.backend.backend() == "jax":
        import jax

        return [tuple(int(part) for part in str(device.compute_capability).split("."))
                for device in jax.devices() if device.platform == "gpu"]
    return [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0))
            for gpu in tf.config.list_physical_devices("GPU")]


def configure(mixed_precision: str) -> str:
    """Call before building a model. Returns the dtype policy it set."""
    if keras.backend.backend() == "jax":
        # tf.data only feeds JAX: keep TensorFlow off the GPUs and their memory.
        tf.config.set_visible_devices([], "GPU")
    else:
        for gpu in tf.config.list_physical_devices("GPU"):
            # Grow on demand, so a second TensorFlow process on the same GPU can start.
            tf.config.experimental.set_memory_growth(gpu, True)
    capabilities = _gpu_compute_capabilities()
    policy = choose_policy(mixed_precision, capabilities)
    keras.mixed_precision.set_global_policy(policy)
    print(f"accelerators: Keras backend {keras.backend.backend()}, {len(capabilities)} GPU(s), "
          f"dtype policy {policy}", flush=True)
    return policy


def replica_devices() -> list[str]:
    """The devices training replicates over: every visible GPU (Keras's names on JAX,
    TensorFlow's logical device names on TensorFlow)."""
    if keras.backend.backend() == "jax":
        return keras.distribution.list_devices("gpu") if _gpu_compute_capabilities() else []
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def distribution_scope():
    """Data parallelism over replica_devices() when there are two or more: MirroredStrategy's
    scope on TensorFlow (build and compile inside it), Keras's DataParallel distribution on
    JAX. Prints how many replicas it uses."""
    devices = replica_devices()
    if len(devices) < 2:
        return contextlib.nullcontext()
    print(f"accelerators: data parallel over {len(devices)} replicas: {', '.join(devices)}",
          flush=True)
    if keras.backend.backend() == "jax":
        return keras.distribution.DataParallel(devices=devices).scope()
    return _mirrored_strategy(tuple(devices)).scope()


@functools.cache
def _mirrored_strategy(devices: tuple[str, ...]) -> tf.distribute.MirroredStrategy:
    """One strategy per process and devices: a second MirroredStrategy (train, then fine_tune
    in one process) reuses its collective ops' keys and its first step fails with "Shape
    mismatch in the collective instance"."""
    return tf.distribute.MirroredStrategy(devices=list(devices))


def replicas_in_use() -> int:
    """How many replicas the current distribution_scope() trains on (1 outside one)."""
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        return distribution.device_mesh.devices.size if distribution else 1
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_batch_size(batch_size: int, examples: int, split: str) -> int:
    """The batch size for a split of `examples` images on replicas_in_use(). Each batch is
    split over the replicas, and under MirroredStrategy Keras averages the first batch of
    every fit and evaluate across them to build the model (keras/src/backend/tensorflow/
    trainer.py, _maybe_symbolic_build), which fails unless every replica's share has the
    same shape: so the batch must split evenly and the first batch be whole (a split
    smaller than a batch gets a smaller batch). JAX's DataParallel needs every batch,
    the last included, to split evenly."""
    replicas = replicas_in_use()
    if replicas == 1:
        return batch_size
    if batch_size % replicas:
        raise TlpError(f"batch_size={batch_size} does not split evenly over {replicas} "
                       f"replicas (GPUs): choose a multiple of {replicas}.")
    if keras.backend.backend() == "jax" and examples % replicas:
        # DataParallel shards every batch, the last too (jax IndivisibleError otherwise).
        raise TlpError(f"The {split} split has {examples} images, which leaves a last batch "
                       f"that does not split evenly over the {replicas} GPUs; on JAX every "
                       f"split's size must be a multiple of {replicas}: use backend "
                       "tensorflow, or add or remove images.")
    whole = examples // replicas * replicas
    if not whole:
        raise TlpError(f"The {split} split has {examples} image(s), fewer than the "
                       f"{replicas} replicas (GPUs): add images or use fewer GPUs "
                       "(CUDA_VISIBLE_DEVICES).")
    return min(batch_size, whole)
