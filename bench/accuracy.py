"""Accuracy of transfer learning on Fashion-MNIST (Debian package `dataset-fashion-mnist`):
500 train and 100 validation images per class, the full 10,000-image test set, 96x96,
MobileNetV2. Reports test accuracy after train and after fine_tune, and wall time, for the
demo's ImageNet weights next to weights=none with the same budget: the same recipe, the
same epochs and the same training functions as the pipeline's train and fine_tune steps.
From scratch (weights=none) the train step trains every layer, so its epochs cost more.
`--weights efficientnet-lite0` adds (or runs alone) the same recipe on EfficientNet-Lite0's
ImageNet weights, a KerasHub preset (backbone=hub:FOLDER).

    .venv/bin/python -m bench.accuracy [--fine-tune-layers all]
        [--weights imagenet none efficientnet-lite0]

Needs the offline weights (derived on first use, like `tlp demo-weights [efficientnet-lite0]`).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import keras

from bench.common import write_dataset
from components import (backbone_catalog, configs, demo_weights, fashion_mnist,
                        lite0_weights, model as model_lib, training)
from components.evaluation import compute_metrics, predict_split


def test_accuracy(model_path: Path, dataset: Path) -> float:
    predictions = predict_split(keras.models.load_model(model_path), str(dataset), "test", 256,
                                keep_wrong=0)
    return compute_metrics(predictions.labels, predictions.probs, fashion_mnist.CLASS_NAMES,
                           top_k=1)["accuracy"]


def fit_options(epochs: int, args: argparse.Namespace) -> training.FitOptions:
    return training.FitOptions(epochs=epochs, target_accuracy=1.01,
                               lr_schedule=args.lr_schedule,
                               label_smoothing=args.label_smoothing)


# Each arm: its name in the table, and its (backbone, weights), derived when the arm runs.
ARMS = {"imagenet": ("imagenet (demo)",
                     lambda: ("MobileNetV2", str(demo_weights.ensure_demo_weights()))),
        "none": ("none", lambda: ("MobileNetV2", "none")),
        "efficientnet-lite0": ("EfficientNet-Lite0", lambda: (
            f"{backbone_catalog.HUB_PREFIX}{lite0_weights.ensure_preset()}", "imagenet"))}


def run(backbone: str, weights: str, dataset: Path, work: Path,
        args: argparse.Namespace) -> dict:
    started, cpu_started = time.monotonic(), time.process_time()
    trained = training.train(
        str(dataset), str(work / "train.keras"), str(work / "train.json"), backbone,
        weights, model_lib.Head(),
        # The pipeline's defaults but for brightness, as this benchmark has always run.
        model_lib.Augmentation(brightness=0.0),
        args.learning_rate, fit_options(args.epochs, args), str(work / "train.state"))
    after_train = test_accuracy(work / "train.keras", dataset)
    tuned = training.fine_tune(
        str(dataset), str(work / "train.keras"), str(work / "train.json"),
        str(work / "tuned.keras"), str(work / "tuned.json"), args.fine_tune_layers,
        args.fine_tune_learning_rate, fit_options(args.fine_tune_epochs, args),
        str(work / "tune.state"))
    return {"after_train": after_train,
            "after_fine_tune": test_accuracy(work / "tuned.keras", dataset),
            # Early stopping (val_loss, patience 3) may end a phase before its epochs.
            "epochs": f"{len(trained['epoch'])}+"
                      f"{sum(epoch > trained['epoch'][-1] for epoch in tuned['epoch'])}",
            "minutes": (time.monotonic() - started) / 60,
            "cpu_minutes": (time.process_time() - cpu_started) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
    parser.add_argument("--fine-tune-layers", default="all")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-4)
    parser.add_argument("--lr-schedule", default="cosine", choices=training.LR_SCHEDULES,
                        help="of both phases, as the pipeline's lr_schedule")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--weights", nargs="+", choices=list(ARMS),
                        default=["imagenet", "none"],
                        help="the arms: MobileNetV2 with the demo's imagenet weights, or from "
                             "scratch (none), EfficientNet-Lite0's ImageNet weights")
    args = parser.parse_args()
    train_images, train_labels = fashion_mnist.load("train")
    test_images, test_labels = fashion_mnist.load("test")
    train = fashion_mnist.first_per_class(train_labels, 500)
    validation = fashion_mnist.first_per_class(train_labels, 100, skip=500)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "data", {
            "train": (train_images[train], train_labels[train]),
            "validation": (train_images[validation], train_labels[validation]),
            "test": (test_images, test_labels)}, args.image_size)
        for arm in args.weights:
            work = Path(tmp) / arm
            work.mkdir()
            name, backbone_and_weights = ARMS[arm]
            results[name] = run(*backbone_and_weights(), dataset, work, args)
    print(f"\nSame budget for each arm: {args.image_size} px, batch "
          f"{configs.BATCH_SIZE}, {args.epochs} epochs train at "
          f"{args.learning_rate:g} then {args.fine_tune_epochs} fine_tune with layers "
          f"{args.fine_tune_layers} at {args.fine_tune_learning_rate:g}, {args.lr_schedule} "
          f"schedule, label smoothing {args.label_smoothing:g}; the train step trains the head "
          "alone on pretrained weights, every layer from scratch (weights=none).")
    print(f"{'weights':<18} {'after train':>12} {'after fine_tune':>16} {'epochs':>7} "
          f"{'minutes':>8} {'CPU min':>8}")
    for name, r in results.items():
        print(f"{name:<18} {r['after_train']:>12.4f} {r['after_fine_tune']:>16.4f} "
              f"{r['epochs']:>7} {r['minutes']:>8.1f} {r['cpu_minutes']:>8.1f}")
    print("load averages at the end (1, 5, 15 min): %.1f %.1f %.1f" % os.getloadavg())


if __name__ == "__main__":
    main()
