"""The demo's fine-tune settings side by side: train once with the pipeline's defaults on the
bundled sample at the demo's 160 px (the demo weights), then fine_tune once per arm, each
scored on the demo's 100 test images and on the first 2,000 Fashion-MNIST test images (the
sample comes from its train set). On 2,000 images a standard error is about 0.9 points; on
the demo's 100 it is 4, so the demo alone cannot tell settings apart.

    .venv/bin/python -m bench.demo_fine_tune [--test-count 2000] [--seed 42]
        [--arms fine_tune_epochs=0 fine_tune_learning_rate=1e-5,fine_tune_epochs=5 ...]

Each arm sets fine_tune parameters (fine_tune_*) over the pipeline's defaults; the table
gives its test accuracies and fine_tune's seconds (process start and imports excluded).
--seed sets the pipeline's seed: the demo's split and training, as `tlp run --seed` does.
"""
import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from bench.accuracy import test_accuracy
from bench.common import write_dataset
from components import configs, demo_weights, fashion_mnist, preprocess, tfrecords, training

ARMS = ["fine_tune_epochs=0",
        "fine_tune_learning_rate=1e-5,fine_tune_epochs=5",  # The defaults before 2026-12-04.
        "fine_tune_learning_rate=1e-4,fine_tune_epochs=5",  # The defaults now.
        f"fine_tune_learning_rate=1e-4,fine_tune_epochs={configs.DEMO_FINE_TUNE_EPOCHS}"]


def parse_arm(arm: str) -> dict:
    """'name=value,...' as pipeline parameters, typed as the pipeline declares them."""
    from pipelines.cli import _TYPES, _pipeline_inputs

    inputs, parameters = _pipeline_inputs(), {}
    for pair in arm.split(","):
        name, _, value = pair.partition("=")
        if not name.startswith("fine_tune_") or name not in inputs:
            raise SystemExit(f"--arms {arm}: {name!r} is no fine_tune parameter "
                             "(fine_tune_epochs, fine_tune_learning_rate, fine_tune_layers)")
        parameters[name] = _TYPES[inputs[name].type](value)
    return parameters


def fashion_mnist_test(out_dir: Path, count: int, names: list[str]) -> Path:
    """The first `count` test images, labelled in the demo's class order (its sorted folder
    names), at the demo's size."""
    images, labels = fashion_mnist.load("test")
    to_demo = np.array([names.index(name) for name in fashion_mnist.CLASS_NAMES])
    return write_dataset(out_dir, {"test": (images[:count], to_demo[labels[:count]])},
                         demo_weights.IMAGE_SIZE, names)


def main() -> None:
    from pipelines.cli import _pipeline_inputs

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=ARMS)
    parser.add_argument("--test-count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=configs.SEED)
    args = parser.parse_args()
    arms = {arm: parse_arm(arm) for arm in args.arms}
    base = {name: spec.default for name, spec in _pipeline_inputs().items()}
    base.update(weights=str(demo_weights.ensure_demo_weights()),
                image_size=demo_weights.IMAGE_SIZE, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = work / "demo"
        preprocess.run(str(configs.SAMPLE_DATA_DIR), str(demo), str(work / "manifest.parquet"),
                       base["image_size"], base["train_ratio"], base["validation_ratio"],
                       base["test_ratio"], base["seed"])
        larger = fashion_mnist_test(work / "larger", args.test_count,
                                    tfrecords.read_metadata(demo)["class_names"])
        trained = [str(work / name) for name in ("train.keras", "train.json")]
        training.train_from_parameters(base, str(demo), *trained, str(work / "train.state"))
        for index, (arm, overrides) in enumerate(arms.items()):
            parameters, model = {**base, **overrides}, trained[0]
            started = time.monotonic()
            if parameters["fine_tune_epochs"]:
                model = str(work / f"arm{index}.keras")
                training.fine_tune_from_parameters(parameters, str(demo), *trained, model,
                                                   str(work / f"arm{index}.json"),
                                                   str(work / f"arm{index}.state"))
            seconds = time.monotonic() - started
            keras.backend.clear_session()
            rows.append((arm, test_accuracy(Path(model), demo),
                         test_accuracy(Path(model), larger), seconds))
            print(f"{arm}: demo test {rows[-1][1]:.3f}, {args.test_count} Fashion-MNIST test "
                  f"{rows[-1][2]:.4f}, fine_tune {seconds:.1f} s", flush=True)
    print(f"\n{'arm':<50} {'demo test':>9} {f'{args.test_count} test':>10} {'fine_tune s':>11}")
    for arm, demo_accuracy, larger_accuracy, seconds in rows:
        print(f"{arm:<50} {demo_accuracy:>9.3f} {larger_accuracy:>10.4f} {seconds:>11.1f}")


if __name__ == "__main__":
    main()
