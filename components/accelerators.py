"""GPU settings for the train and fine_tune steps: memory growth, mixed precision and
data parallelism over every visible GPU, on either Keras backend (TensorFlow or JAX), and
the devices they train on. On a CPU-only machine nothing changes, unless the step was
compiled for GPUs (configs.REQUIRE_GPU_ENV): then it fails rather than train on the CPU.

TensorFlow is imported only where it is used: on JAX this module works without it (the GPU
benchmark runs where only JAX is installed)."""
import contextlib
import functools
import importlib.metadata
import os
from collections.abc import Callable

import keras

from components import configs, distributed
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


def _tensorflow():
    """TensorFlow, or None where it is not installed (allowed on JAX only)."""
    try:
        import tensorflow as tf
    except ImportError:
        if keras.backend.backend() != "jax":
            raise
        return None
    return tf


def gpus() -> list[tuple[str, tuple[int, int]]]:
    """(description, compute capability) of each GPU the Keras backend sees, e.g.
    ('cuda:0 (NVIDIA H100 80GB HBM3)', (9, 0)); under several JAX processes, this process's
    own."""
    if keras.backend.backend() == "jax":
        import jax

        return [(f"{device} ({device.device_kind})",
                 tuple(int(part) for part in str(device.compute_capability).split(".")))
                for device in jax.local_devices() if device.platform == "gpu"]
    tf = _tensorflow()
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        name = gpu.name.removeprefix("/physical_device:")
        found.append((f"{name} ({details.get('device_name', 'unknown GPU')})",
                      details.get("compute_capability", (0, 0))))
    return found


def _gpu_compute_capabilities() -> list[tuple[int, int]]:
    return [capability for _, capability in gpus()]


def devices_seen() -> list[str]:
    """Every device the Keras backend sees, CPUs included (for messages)."""
    if keras.backend.backend() == "jax":
        import jax

        return [str(device) for device in jax.devices()]
    return [device.name.removeprefix("/physical_device:")
            for device in _tensorflow().config.list_physical_devices()]


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _why_no_gpu(backend: str) -> str:
    """What the backend's installation says about why it finds no GPU."""
    if backend == "jax":
        import jax

        plugins = {name: _installed(name) for name in ("jax-cuda12-plugin", "jax-cuda13-plugin")}
        plugins = {name: version for name, version in plugins.items() if version}
        if not plugins:
            return (f"jax {jax.__version__} has no CUDA plugin installed (jax-cuda12-plugin): "
                    f"it is the CPU-only build; the GPU image installs jax[cuda12]=="
                    f"{jax.__version__}.")
        return (f"jax {jax.__version__} has its CUDA plugin ("
                + ", ".join(f"{name} {version}" for name, version in plugins.items())
                + ") but the plugin found no usable GPU (no driver or device in the container, "
                  "or a driver older than its CUDA needs).")
    tf = _tensorflow()
    if not tf.test.is_built_with_cuda():
        return (f"TensorFlow {tf.__version__} is built without CUDA (tensorflow-cpu, the CPU "
                "image's); the GPU image keeps its base's CUDA TensorFlow.")
    return (f"TensorFlow {tf.__version__} is built with CUDA but finds no GPU (no driver or "
            "device in the container).")


def check_required_gpus(backend: str, found: list[str],
                        seen: Callable[[], list[str]] = devices_seen) -> None:
    """Fails when the step was compiled for GPUs (configs.REQUIRE_GPU_ENV holds their count)
    but the backend found none: training on the CPU instead would only be slow and silent.
    Fewer GPUs than asked for only warn (CUDA_VISIBLE_DEVICES may narrow them on purpose)."""
    value = os.environ.get(configs.REQUIRE_GPU_ENV, "").strip()
    wanted = int(value) if value.isdigit() else (1 if value else 0)
    if not wanted:
        return
    if found:
        if len(found) < wanted:
            print(f"accelerators: warning: {configs.REQUIRE_GPU_ENV}={value} but {backend} "
                  f"sees {len(found)} GPU(s)", flush=True)
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = f" CUDA_VISIBLE_DEVICES={visible!r}." if visible is not None else ""
    raise TlpError(
        f"{configs.REQUIRE_GPU_ENV}={value}: this step was compiled to train on {wanted} "
        f"GPU(s), but Keras's {backend} backend finds no GPU; it sees only "
        f"{', '.join(seen()) or 'no device'}. {_why_no_gpu(backend)}{visible} Likely fixes: "
        f"run the step in the GPU image ({configs.GPU_IMAGE_NAME}: CUDA TensorFlow and "
        "jax[cuda12]); check the node's NVIDIA driver and the NVIDIA device plugin (the node's "
        "allocatable nvidia.com/gpu; nvidia-smi in the step's container); or compile with "
        "--gpu-count 0 to train on the CPU on purpose.")


def describe_devices(found: list[str]) -> str:
    """'1 device(s): cuda:0 (NVIDIA H100 80GB HBM3)', or 'CPU'."""
    return f"{len(found)} device(s): {', '.join(found)}" if found else "CPU"


def configure(mixed_precision: str) -> str:
    """Call before building a model. Prints the devices it will train on and fails if the
    step needs GPUs and the backend finds none (check_required_gpus). Returns the dtype
    policy it set."""
    backend = keras.backend.backend()
    tf = _tensorflow()
    if backend == "jax":
        if tf is not None:
            # tf.data only feeds JAX: keep TensorFlow off the GPUs and their memory.
            tf.config.set_visible_devices([], "GPU")
    else:
        for gpu in tf.config.list_physical_devices("GPU"):
            # Grow on demand, so a second TensorFlow process on the same GPU can start.
            tf.config.experimental.set_memory_growth(gpu, True)
    found = gpus()
    names = [name for name, _ in found]
    print(f"accelerators: training on {describe_devices(names)}", flush=True)
    check_required_gpus(backend, names)
    policy = choose_policy(mixed_precision, [capability for _, capability in found])
    keras.mixed_precision.set_global_policy(policy)
    print(f"accelerators: Keras backend {backend}, {len(found)} GPU(s), "
          f"dtype policy {policy}", flush=True)
    return policy


def replica_devices() -> list[str]:
    """The devices training replicates over: every visible GPU (Keras's names on JAX,
    TensorFlow's logical device names on TensorFlow); under several JAX processes every
    device of every process, GPUs or else CPUs (components/distributed.py)."""
    if keras.backend.backend() == "jax":
        if distributed.current()[1] > 1:
            return keras.distribution.list_devices()
        return keras.distribution.list_devices("gpu") if _gpu_compute_capabilities() else []
    return [device.name for device in _tensorflow().config.list_logical_devices("GPU")]


def distribution_scope():
    """Data parallelism over replica_devices() when there are two or more: MirroredStrategy's
    scope on TensorFlow (build and compile inside it), Keras's DataParallel distribution on
    JAX. Prints how many replicas it uses. Under several processes each reads its own part of
    the data (tfrecords.load_split), so Keras must not shard the datasets again."""
    devices = replica_devices()
    if len(devices) < 2:
        return contextlib.nullcontext()
    print(f"accelerators: data parallel over {len(devices)} replicas: {', '.join(devices)}",
          flush=True)
    if keras.backend.backend() == "jax":
        return keras.distribution.DataParallel(devices=devices,
                                               auto_shard_dataset=False).scope()
    return _mirrored_strategy(tuple(devices)).scope()


@functools.cache
def _mirrored_strategy(devices: tuple[str, ...]) -> "tf.distribute.MirroredStrategy":
    """One strategy per process and devices: a second MirroredStrategy (train, then fine_tune
    in one process) reuses its collective ops' keys and its first step fails with "Shape
    mismatch in the collective instance"."""
    return _tensorflow().distribute.MirroredStrategy(devices=list(devices))


def replicas_in_use() -> int:
    """How many replicas the current distribution_scope() trains on (1 outside one)."""
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        return distribution.device_mesh.devices.size if distribution else 1
    return _tensorflow().distribute.get_strategy().num_replicas_in_sync


def replica_batch_size(batch_size: int, examples: int, split: str) -> int:
    """The batch size for a split of `examples` images on replicas_in_use(). Each batch is
    split over the replicas, and under MirroredStrategy Keras averages the first batch of
    every fit and evaluate across them to build the model (keras/src/backend/tensorflow/
    trainer.py, _maybe_symbolic_build), which fails unless every replica's share has the
    same shape: so the batch must split evenly and the first batch be whole (a split
    smaller than a batch gets a smaller batch). JAX's DataParallel needs every batch,
    the last included, to split evenly; under several processes every batch is whole."""
    replicas = replicas_in_use()
    if replicas == 1:
        return batch_size
    if batch_size % replicas:
        raise TlpError(f"batch_size={batch_size} does not split evenly over {replicas} "
                       f"replicas (GPUs): choose a multiple of {replicas}.")
    if distributed.current()[1] > 1:
        return batch_size  # Whole batches on every process (tfrecords.load_split).
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
