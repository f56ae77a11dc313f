"""GPU settings for the train and fine_tune steps: memory growth, mixed precision and
data parallelism over every visible GPU, on either Keras backend (TensorFlow or JAX). On a
CPU-only machine nothing changes."""
import contextlib

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


def distribution_scope():
    """Every visible GPU, when there is more than one: MirroredStrategy's scope on
    TensorFlow (build and compile inside it), Keras's data-parallel distribution on JAX."""
    if keras.backend.backend() == "jax":
        if len(_gpu_compute_capabilities()) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(
                devices=keras.distribution.list_devices("gpu")))
        return contextlib.nullcontext()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()
