"""The GPU benchmark, one command, on a machine with an NVIDIA GPU:

    python3 -m bench.gpu [any bench.train_throughput flag, e.g. --backend jax --steps 50]

bench.train_throughput with the issue's target settings: MobileNetV2 at 224 px, batch 128,
mixed precision auto (bfloat16 on Ampere or newer), the train phase (frozen backbone) and
fine_tune (top 30 layers), JAX then TensorFlow, each in its own process; 5,000 images, 100
steps (12,800 images) per timed epoch, best of 3. For each phase and backend: the real input
pipeline (tf.data over the preprocess step's TFRecords, decoded images cached in memory)
against the same model fed one batch from memory, the default augmentation against none,
and whether Keras compiled the train step. Then the targets: on an H100-class GPU, JAX
trains (train phase, default augmentation) at 15,000 img/s or more, and the real pipeline
reaches 90% or more of the in-memory rate.

Works with the JAX a GPU machine already has (any recent version, e.g. 0.11.2 with its
CUDA 13 plugin) and Keras 3 carried as wheels (bench/gpu_wheels.sh; README, GPU benchmark).
A backend that is not installed is reported and skipped; without TensorFlow the real
pipeline (it needs tf.data) is skipped and the in-memory arms still run. Without
Fashion-MNIST (the Debian package) the images are random noise, which changes nothing on
the in-memory arms (same shapes, same work).

On a CPU, tiny settings check that it runs: python -m bench.gpu --image-size 64
--images-per-class 10 --steps 3 --repeats 1 --backend jax
"""
import importlib.metadata
import platform
import shutil
import subprocess
import sys

from bench import train_throughput

SETTINGS = dict(backend=["jax", "tensorflow"], image_size=224, batch_size=128,
                images_per_class=500, steps=100, repeats=3, fine_tune_layers="30",
                mixed_precision="auto", jit_compile="auto")
TARGET_JAX_TRAIN = 15_000  # img/s, train phase, default augmentation, H100-class GPU.
TARGET_PIPELINE_RATIO = 0.9


def environment() -> list[str]:
    """Python, the packages that matter and their versions, the GPUs nvidia-smi lists."""
    lines = [f"python {platform.python_version()} ({sys.executable})"]
    versions = []
    for name in ("keras", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin",
                 "tensorflow", "tensorflow-cpu", "numpy"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            if name in ("tensorflow", "keras", "jax"):
                versions.append(f"{name} not installed")
    lines.append(", ".join(versions))
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True)
        lines += [f"nvidia-smi: {gpu}" for gpu in query.stdout.strip().splitlines()]
    else:
        lines.append("nvidia-smi: not found (no NVIDIA GPU or driver)")
    return lines


def targets(results: list[dict]) -> list[str]:
    """Each target, met or not, with the figure it was judged on."""
    lines = []
    by_backend = {result["backend"]: result for result in results if "error" not in result}
    jax = by_backend.get("jax")
    if jax is None:
        lines.append(f"target JAX train >= {TARGET_JAX_TRAIN:,} img/s: not measured (JAX "
                     "did not run)")
    else:
        rates = jax["rates"]["train"]
        arm = "pipeline" if rates["pipeline"] is not None else "in_memory"
        rate = rates[arm]
        verdict = "met" if rate >= TARGET_JAX_TRAIN else "NOT met"
        lines.append(f"target JAX train (default augmentation, {arm.replace('_', '-')}) >= "
                     f"{TARGET_JAX_TRAIN:,} img/s: {verdict}: {rate:,.0f} img/s on "
                     f"{', '.join(jax['devices'])}")
    for backend, result in by_backend.items():
        for phase, rates in result["rates"].items():
            label = f"target {backend} {phase}: real pipeline >= {TARGET_PIPELINE_RATIO:.0%} "\
                    "of in-memory"
            if rates["pipeline"] is None:
                lines.append(f"{label}: not measured (no TensorFlow, so no tf.data)")
                continue
            ratio = rates["pipeline"] / rates["in_memory"]
            lines.append(f"{label}: {'met' if ratio >= TARGET_PIPELINE_RATIO else 'NOT met'}: "
                         f"{ratio:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    for line in environment():
        print(line, flush=True)
    results = train_throughput.main(argv, **SETTINGS)
    for line in targets(results):
        print(line)


if __name__ == "__main__":
    main()
