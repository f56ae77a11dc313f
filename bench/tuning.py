"""Tuning against no tuning, side by side, on bench.accuracy's Fashion-MNIST subset (500
train and 100 validation images per class, the 10,000 test images, 96 px, MobileNetV2 with
the demo's ImageNet weights). The untuned arm is bench.accuracy's recipe (10 epochs train at
1e-3, 5 fine_tune with every layer at 1e-4, cosine), or with `--baseline defaults` the
pipeline's own defaults (the top 30 layers fine-tuned, constant rates); the tuned arm starts
from the same parameters, runs the pipeline's tuning (the same sampling, round plan, trials
and selection as the tune_* steps: components/tuning.py, training.run_trial) and then trains
with the best configuration. Prints each arm's test accuracy and wall time, the ratio, and
the best configuration.

    .venv/bin/python -m bench.tuning [--trials 8] [--rounds 2] [--search-space FILE]
        [--baseline recipe|defaults]
        [--train-per-class 500 --validation-per-class 100 --test-count 10000]

The trials run one after another in this process (the pipeline runs each in its own
process, a few seconds more each for starting Python and TensorFlow).
"""
import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import keras

from bench.accuracy import test_accuracy
from bench.common import write_dataset
from components import configs, demo_weights, fashion_mnist, tfrecords, training, tuning

# The default search space but with the recipe's fine_tune_layers=all among the choices.
SPACE = {**configs.TUNE_SEARCH_SPACE,
         "fine_tune_layers": {"choice": ["30", "60", "100", "all"]}}
# What each baseline changes from the pipeline's defaults: bench.accuracy's recipe, or
# nothing (the untuned pipeline a user gets).
BASELINES = {
    "recipe": dict(fine_tune_layers="all", fine_tune_learning_rate=1e-4, lr_schedule="cosine",
                   augment_brightness=0.0, target_accuracy=1.01),
    "defaults": {},
}


def base_parameters(image_size: int, baseline: str) -> dict:
    from pipelines.cli import _pipeline_inputs

    parameters = {name: spec.default for name, spec in _pipeline_inputs().items()}
    return {**parameters, **BASELINES[baseline],
            "weights": str(demo_weights.ensure_demo_weights()), "image_size": image_size}


def train_and_test(parameters: dict, dataset: Path, work: Path) -> float:
    """The pipeline's train then fine_tune, then accuracy on the test split."""
    training.train_from_parameters(parameters, str(dataset), str(work / "train.keras"),
                                   str(work / "train.json"), str(work / "train.state"))
    training.fine_tune_from_parameters(parameters, str(dataset), str(work / "train.keras"),
                                       str(work / "train.json"), str(work / "tuned.keras"),
                                       str(work / "tuned.json"), str(work / "tune.state"))
    keras.backend.clear_session()
    return test_accuracy(work / "tuned.keras", dataset)


def tune(base: dict, dataset: Path, work: Path, args: argparse.Namespace) -> dict:
    """The tuning steps' work, in this process: sample, rounds of trials, selection."""
    space = tuning.load_space(args.search_space) if args.search_space else SPACE
    dimensions = tuning.parse_space(space, str(args.search_space or "bench.tuning.SPACE"),
                                    tuning.tunable_types())
    rounds = tuning.plan(args.trials, args.rounds, base["epochs"], base["fine_tune_epochs"])
    examples = tfrecords.read_metadata(dataset)["num_examples"]
    steps, validation = math.ceil(examples["train"] / base["batch_size"]), examples["validation"]
    print(tuning.describe_budget(rounds, base["fine_tune_epochs"], steps), flush=True)
    table = tuning.new_table(space, rounds, base["seed"])
    items = tuning.items(tuning.configurations(dimensions, args.trials, base["seed"]), 0,
                         rounds[0])
    while items:
        rows = []
        for item in items:
            started = time.monotonic()
            item = tuning.resolve(item, base)
            overrides, parameters = tuning.trial_parameters(base, item)
            histories = training.run_trial(parameters, str(dataset),
                                           str(work / f"trial-{item['trial']}-{item['round']}"),
                                           item["train_fraction"])
            keras.backend.clear_session()
            rows.append(tuning.trial_row(item, overrides, *tuning.score(*histories),
                                         time.monotonic() - started, validation))
        table, items = tuning.select(table, rows)
        tuning.print_selection(table, rows, len(items) or 1)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=configs.TUNE_ROUNDS)
    parser.add_argument("--search-space", type=Path,
                        help="[the pipeline's default with fine_tune_layers=all among the "
                             "choices]")
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="recipe",
                        help="the untuned arm, and the tuned arm's trial 0: bench.accuracy's "
                             "recipe or the pipeline's defaults [%(default)s]")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--validation-per-class", type=int, default=100)
    parser.add_argument("--test-count", type=int, default=10_000)
    parser.add_argument("--arms", nargs="+", choices=("untuned", "tuned"),
                        default=["untuned", "tuned"])
    args = parser.parse_args()
    train_images, train_labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    train = fashion_mnist.first_per_class(train_labels, args.train_per_class)
    validation = fashion_mnist.first_per_class(train_labels, args.validation_per_class,
                                               skip=args.train_per_class)
    base = base_parameters(args.image_size, args.baseline)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "data", {
            "train": (train_images[train], train_labels[train]),
            "validation": (train_images[validation], train_labels[validation]),
            "test": (test_images[:args.test_count], test_labels[:args.test_count])},
            args.image_size)
        for arm in args.arms:
            work = Path(tmp) / arm
            work.mkdir()
            started, cpu_started = time.monotonic(), time.process_time()
            parameters, table = base, None
            if arm == "tuned":
                table = tune(base, dataset, work, args)
                parameters = tuning.apply(base, table["best"]["overrides"])
            accuracy = train_and_test(parameters, dataset, work)
            # CPU time too: on a shared machine it shows what the arm cost, not its wait.
            results[arm] = (accuracy, (time.monotonic() - started) / 60,
                            (time.process_time() - cpu_started) / 60, table)
            print(f"{arm}: test accuracy {accuracy:.4f}, {results[arm][1]:.1f} minutes, "
                  f"{results[arm][2]:.1f} CPU minutes; load averages %.1f %.1f %.1f"
                  % os.getloadavg(), flush=True)
    print(f"\n{args.train_per_class} train and {args.validation_per_class} validation images "
          f"per class, {args.test_count} test images, {args.image_size} px; tuning: "
          f"{args.trials} trials, {args.rounds} rounds; untuned: {args.baseline}")
    print(f"{'arm':<9} {'test accuracy':>14} {'minutes':>8} {'CPU min':>8}")
    for arm, (accuracy, minutes, cpu_minutes, _) in results.items():
        print(f"{arm:<9} {accuracy:>14.4f} {minutes:>8.1f} {cpu_minutes:>8.1f}")
    if len(results) == 2:
        print(f"tuned - untuned: {results['tuned'][0] - results['untuned'][0]:+.4f}; wall "
              f"time ratio {results['tuned'][1] / results['untuned'][1]:.2f}, CPU time ratio "
              f"{results['tuned'][2] / results['untuned'][2]:.2f}")
    if "tuned" in results:
        best = results["tuned"][3]["best"]
        print(f"best configuration (trial {best['trial']}, val_accuracy "
              f"{best['val_accuracy']:.4f}): {best['overrides']}")
    print("load averages at the end (1, 5, 15 min): %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
