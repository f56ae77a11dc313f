"""Training throughput: the real input pipeline versus the same model fed one batch
already in memory (the upper bound), and the default augmentation (the pipeline's
defaults, configs.AUGMENT_*) versus none (the same model without it, also fed from
memory), for the train (frozen backbone) and fine_tune (top layers unfrozen) phases, side by
side in one run, on each Keras backend asked for (TensorFlow and JAX by default; tf.data
feeds both); on JAX also the same train step as one jax.jit over a batch already on the
device (no fit loop, no copy to the device: what the model alone reaches), and the real
pipeline fed to fit as Keras feeds a tf.data dataset itself (the "Keras feed" column: the
other columns are fed as train and fine_tune feed fit, components/device_feed.py). Targets: the
real pipeline reaches at least 90% of the in-memory bound; the augmentation's share of a
step (1 - rate with / rate without) stays small.

    .venv/bin/python -m bench.train_throughput [--backend tensorflow jax] [--image-size 160]
        [--steps N] [--jit-compile auto|true] [--mixed-precision auto|bfloat16|float16|off]

Each backend runs in its own process (Keras picks its backend once per process), one after
the other, on whatever it sees (CPU here; a GPU where there is one): it prints the devices,
the dtype policy and whether Keras compiled the train step (jit_compile: XLA on TensorFlow,
jax.jit on JAX), as requested and as resolved, and what jit_compile=True would give (Keras
turns it off for models with layers that do not support it, and "auto" turns XLA off for
TensorFlow on CPU-only machines). A backend that is not installed is reported and skipped.
Without TensorFlow (a GPU machine with JAX alone) the real-pipeline column, which needs
tf.data, is skipped and the in-memory arms still run; without Fashion-MNIST (the Debian
package dataset-fashion-mnist) the images are random noise. bench/gpu.py runs this with the
GPU settings.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
    os.environ["KERAS_BACKEND"] = "jax"  # Keras's default backend is not installed.

import keras  # noqa: E402
import numpy as np  # noqa: E402

from components import accelerators, configs, fashion_mnist, model as model_lib  # noqa: E402
from components.device_feed import DeviceFeed  # noqa: E402
from components.errors import TlpError  # noqa: E402

PHASES = ("train", "fine_tune")
JIT_MODES = ("auto", "true")
# The arms of each phase; pipeline_keras_feed and device_resident on JAX only.
ARMS = ("pipeline", "pipeline_keras_feed", "in_memory", "in_memory_no_augmentation",
        "device_resident")


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started  # The last epoch's.


class Repeated(keras.utils.PyDataset):
    """One batch, `steps` times: the in-memory input where TensorFlow (tf.data) is absent."""

    def __init__(self, batch: tuple[np.ndarray, np.ndarray], steps: int):
        super().__init__()
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        return self.batch


def images_per_second(model: keras.Model, dataset, images: int,
                      steps: int | None = None) -> float:
    timer = EpochTimer()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
              callbacks=[timer])
    return images / timer.seconds


def best_rates(runs: dict[str, tuple[keras.Model, object, int, int | None]],
               repeats: int) -> dict[str, float]:
    """Best epoch rate (images/s) of each run, (model, input, images per epoch, steps per
    epoch or None for the whole input), the runs taking turns so that the machine's noise
    hits them alike; one untimed epoch each first pays for tracing, compiling and filling
    the cache."""
    for model, dataset, _, steps in runs.values():
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, (model, dataset, images, steps) in runs.items():
            best[name] = max(best[name], images_per_second(model, dataset, images, steps))
    return best


def device_resident_rate(model: keras.Model, batch, steps: int, repeats: int) -> float | None:
    """Best rate (images/s) of the compiled model's train step as one jax.jit over one batch
    already on the device: no fit loop, no host-to-device copy, so the gap to in_memory is
    what Keras's loop and the feed cost. JAX only (None elsewhere); after a fit, which built
    the optimizer."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    images, labels = (jax.device_put(np.asarray(part)) for part in batch)
    loss_fn = model.loss

    def loss(trainable, non_trainable, images, labels):
        predictions, non_trainable = model.stateless_call(trainable, non_trainable, images,
                                                          training=True)
        return loss_fn(labels, predictions), non_trainable

    gradient = jax.value_and_grad(loss, has_aux=True)

    @jax.jit
    def step(state, images, labels):
        trainable, non_trainable, optimizer_variables = state
        (value, non_trainable), grads = gradient(trainable, non_trainable, images, labels)
        trainable, optimizer_variables = model.optimizer.stateless_apply(
            optimizer_variables, grads, trainable)
        return value, (trainable, non_trainable, optimizer_variables)

    state = tuple([variable.value for variable in variables] for variables in (
        model.trainable_variables, model.non_trainable_variables, model.optimizer.variables))
    value, state = step(state, images, labels)  # Compiles.
    value.block_until_ready()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            value, state = step(state, images, labels)
        value.block_until_ready()
        best = max(best, steps * len(images) / (time.perf_counter() - started))
    return best


def source_images(images_per_class: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(28x28 uint8 images, labels, what they are): the first images of each Fashion-MNIST
    class, or random noise where the Debian package is not installed."""
    try:
        images, labels = fashion_mnist.load("train")
    except TlpError:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(10, dtype=np.uint8), images_per_class)
        return (rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels,
                "random noise (Fashion-MNIST is not installed)")
    chosen = fashion_mnist.first_per_class(labels, images_per_class)
    return images[chosen], labels[chosen], "Fashion-MNIST"


def memory_batch(images: np.ndarray, labels: np.ndarray, size: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as load_split yields it (uint8 RGB at `size`, integer labels), made with
    Pillow, for runs without TensorFlow."""
    from PIL import Image

    chosen = np.arange(batch_size) % len(images)
    pixels = np.stack([np.asarray(Image.fromarray(images[i]).convert("RGB").resize(
        (size, size), Image.Resampling.BILINEAR)) for i in chosen])
    return pixels, labels[chosen].astype(np.int32)


def jit_state(model: keras.Model, requested: str) -> dict:
    """Whether Keras compiles this model's train step: as requested (auto or true), as Keras
    resolved it, and what jit_compile=True would give."""
    if requested == "true":
        model.jit_compile = True  # Keras turns it off (with a warning) if the model can't.
    try:
        from keras.src.trainers.trainer import model_supports_jit
        supported = bool(model_supports_jit(model))
    except ImportError:  # A Keras without it: unknown.
        supported = None
    return {"requested": requested, "resolved": bool(model.jit_compile),
            "if_true": supported}


def measure(args: argparse.Namespace) -> dict:
    """Devices, dtype policy, and per phase the rates of ARMS (None where not measured)
    and the compilation state of both models, on this process's backend."""
    policy = accelerators.configure(args.mixed_precision)  # Prints the devices.
    devices = [name for name, _ in accelerators.gpus()] or ["CPU"]
    images, labels, source = source_images(args.images_per_class)
    tensorflow = installed("tensorflow")
    results = {"backend": keras.backend.backend(), "devices": devices, "policy": policy,
               "source": source, "tensorflow": tensorflow, "rates": {}, "jit": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if tensorflow:
            import tensorflow as tf

            from bench.common import write_dataset
            from components import tfrecords

            data = write_dataset(Path(tmp), {"train": (images, labels)}, args.image_size)
            real = tfrecords.load_split(data, "train", args.batch_size, training=True, seed=0)
            steps = args.steps or len(real)
            batch = next(iter(real))
            # Fed as train and fine_tune feed fit (on JAX: batches copied to the device by
            # a background thread); on JAX also as Keras feeds a tf.data dataset itself.
            in_memory = DeviceFeed(tf.data.Dataset.from_tensors(batch).repeat(steps))
            real_feed = ((real.repeat(), steps * args.batch_size, steps) if args.steps
                         else (real, len(images), None))
            pipeline = {"pipeline": (DeviceFeed(real_feed[0]), *real_feed[1:])}
            if keras.backend.backend() == "jax":
                pipeline["pipeline_keras_feed"] = real_feed
        else:
            steps = args.steps or -(-len(images) // args.batch_size)
            batch = memory_batch(images, labels, args.image_size, args.batch_size)
            in_memory = Repeated(batch, steps)
            pipeline = {}
        models = {"augmented": model_lib.build_model(10, "MobileNetV2", args.image_size, "none",
                                                     augmentation=model_lib.Augmentation()),
                  "no_augmentation": model_lib.build_model(
                      10, "MobileNetV2", args.image_size, "none",
                      augmentation=model_lib.Augmentation.none())}
        for phase in PHASES:
            for model in models.values():
                if phase == "fine_tune":
                    base = model_lib.backbone_of(model)
                    model_lib.unfreeze_top_layers(
                        model, model_lib.layers_to_unfreeze(base, args.fine_tune_layers))
                model_lib.compile_model(model, 10, 1e-5,
                                        steps_per_execution=args.steps_per_execution)
            results["jit"][phase] = {name: jit_state(model, args.jit_compile)
                                     for name, model in models.items()}
            runs = {"in_memory": (models["augmented"], in_memory, steps * args.batch_size, None),
                    "in_memory_no_augmentation": (models["no_augmentation"], in_memory,
                                                  steps * args.batch_size, None)}
            runs = {**{arm: (models["augmented"], *feed) for arm, feed in pipeline.items()},
                    **runs}
            rates = best_rates(runs, args.repeats)
            rates["device_resident"] = device_resident_rate(models["augmented"], batch, steps,
                                                            args.repeats)
            results["rates"][phase] = {arm: rates.get(arm) for arm in ARMS}
            for name, model in models.items():  # After the first fit: what Keras used.
                results["jit"][phase][name]["after_fit"] = bool(model.jit_compile)
    return results


def run_backend(backend: str, argv: list[str]) -> dict:
    """measure() in a fresh process on `backend`; {'error': ...} if it is not installed or
    fails."""
    if not installed(backend):
        return {"backend": backend, "error": f"{backend} is not installed"}
    result = subprocess.run([sys.executable, "-m", "bench.train_throughput", "--child", *argv],
                            env={**os.environ, "KERAS_BACKEND": backend},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in result.stdout.splitlines():
        if line.startswith("accelerators:"):
            print(f"{backend}: {line}", flush=True)
    if result.returncode:
        return {"backend": backend,
                "error": f"failed (exit {result.returncode}):\n{result.stderr[-3000:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def parser(**defaults) -> argparse.ArgumentParser:
    """The flags; `defaults` overrides their defaults (bench/gpu.py's GPU settings)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", choices=configs.BACKENDS,
                        default=list(configs.BACKENDS))
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per timed epoch (0: one pass over the images)")
    parser.add_argument("--fine-tune-layers", default="30")
    parser.add_argument("--steps-per-execution", type=int, default=configs.STEPS_PER_EXECUTION,
                        help="train steps per compiled call (Keras's steps_per_execution)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit-compile", choices=JIT_MODES, default="auto",
                        help="jit_compile asked of Keras (true: also on TensorFlow on CPU)")
    parser.add_argument("--mixed-precision", choices=accelerators.MIXED_PRECISION_MODES,
                        default=configs.MIXED_PRECISION,
                        help="auto: bfloat16 on Ampere or newer GPUs, float32 on CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(**defaults)
    return parser


def run(args: argparse.Namespace) -> list[dict]:
    """Each backend's results, one process each."""
    argv = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
            if name not in ("backend", "child", "json")]
    return [run_backend(backend, argv) for backend in args.backend]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _jit(state: dict) -> str:
    on = {True: "on", False: "off", None: "?"}
    return f"{on[state['after_fit']]} (True: {on[state['if_true']]})"


def report(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"{args.images_per_class * 10} images, {args.image_size} px, batch {args.batch_size}, "
          f"{f'{args.steps} steps' if args.steps else 'one pass'} per timed epoch, best of "
          f"{args.repeats}; {args.steps_per_execution} step(s) per execution; fine_tune "
          f"unfreezes {args.fine_tune_layers} layers; jit_compile "
          f"{args.jit_compile}; mixed_precision {args.mixed_precision}")
    for result in results:
        if "error" in result:
            print(f"{result['backend']}: not measured: {result['error']}")
        else:
            print(f"{result['backend']}: {', '.join(result['devices'])}; dtype policy "
                  f"{result['policy']}; images: {result['source']}"
                  + ("" if result["tensorflow"] else "; no TensorFlow: no real pipeline "
                     "(it needs tf.data), in-memory arms only"))
    measured = [result for result in results if "error" not in result]
    print(f"{'phase':<10} {'backend':<11} {'pipeline':>9} {'Keras feed':>11} {'in-memory':>10} "
          f"{'ratio':>6} "
          f"{'no-augment':>11} {'augment share':>14} {'on-device':>10}  "
          "jit: augmented / none")
    for phase in PHASES:
        for result in measured:
            rates = result["rates"][phase]
            pipeline, bound = rates["pipeline"], rates["in_memory"]
            bare = rates["in_memory_no_augmentation"]
            jit = result["jit"][phase]
            ratio = "-" if pipeline is None else f"{pipeline / bound:.2f}"
            print(f"{phase:<10} {result['backend']:<11} {_rate(pipeline):>9} "
                  f"{_rate(rates['pipeline_keras_feed']):>11} "
                  f"{_rate(bound):>10} {ratio:>6} {_rate(bare):>11} "
                  f"{1 - bound / bare:>14.2f} {_rate(rates['device_resident']):>10}  "
                  f"{_jit(jit['augmented'])} / "
                  f"{_jit(jit['no_augmentation'])}")
    print("img/s; Keras feed: the real pipeline fed to fit as a plain tf.data dataset, Keras "
          "reading and copying each batch between steps (JAX only; the pipeline and in-memory "
          "columns are fed as train and fine_tune feed fit: components/device_feed.py); "
          "ratio: pipeline / in-memory; augment share: 1 - in-memory / no-augment; "
          "on-device: the augmented train step as one jax.jit over a batch already on the "
          "device, no fit loop (JAX only); jit: whether Keras compiled the train step (what "
          "jit_compile=True would give)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None, **defaults) -> list[dict]:
    args = parser(**defaults).parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return []
    results = run(args)
    report(args, results)
    if any("error" in result and "not installed" not in result["error"]
           for result in results):
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
