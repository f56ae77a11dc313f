"""The train step's head phase at the demo's settings: on cached features of K augmented views
(head_feature_views=K) against on the images (0, the behaviour before cached features), side
by side in one run. Each arm runs in its own process; the time counted is the head phase
alone (feature extraction included; process start, imports and model build excluded), as
the arm's process measures it around training.fit_head_on_features / training.fit.

    .venv/bin/python -m bench.head_phase [--views 0 1 2 4] [--seeds 42] [--epochs 10]

Prints, per arm and seed, the head phase's seconds, its speed-up over views=0, and the
model's best validation accuracy and test accuracy after the phase (bundled sample, 160 px,
MobileNetV2 with the offline demo weights, the pipeline's default augmentation)."""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_arm(dataset_dir: str, views: int, seed: int, epochs: int, weights: str = "") -> dict:
    """One arm, in this process: build the demo's model (weights: a backbone weights file;
    empty: the demo weights), time its head phase, test it."""
    from components import keras_backend

    keras_backend.select("tensorflow")
    import keras

    from components import (accelerators, demo_weights, evaluation, model as model_lib,
                            tfrecords, training)

    accelerators.configure("auto")
    keras.utils.set_random_seed(seed)
    metadata = tfrecords.read_metadata(dataset_dir)
    model = model_lib.build_model(metadata["num_classes"], "MobileNetV2",
                                  metadata["image_size"],
                                  weights or str(demo_weights.ensure_demo_weights()),
                                  model_lib.Head(), model_lib.Augmentation())
    options = training.FitOptions(epochs=epochs, seed=seed)
    with tempfile.TemporaryDirectory() as state:
        start = time.perf_counter()
        if views:
            history = training.fit_head_on_features(model, dataset_dir, views, options,
                                                    1e-3, state + "/state")
        else:
            history = training.fit(model, dataset_dir, options, 1e-3, state + "/state")
        seconds = time.perf_counter() - start
    test = evaluation.predict_split(model, dataset_dir, "test", 64)
    return {"views": views, "seed": seed, "seconds": seconds,
            "val_accuracy": max(history["val_accuracy"]),
            "test_accuracy": float((test.probs.argmax(1) == test.labels).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arm", type=str, help=argparse.SUPPRESS)  # dataset,views,seed
    args = parser.parse_args()
    if args.arm:
        dataset_dir, views, seed = args.arm.split(",")
        print("ARM " + json.dumps(run_arm(dataset_dir, int(views), int(seed), args.epochs)))
        return
    from components import configs, demo_weights, preprocess

    with tempfile.TemporaryDirectory() as work:
        dataset_dir = f"{work}/dataset"
        preprocess.run(str(configs.SAMPLE_DATA_DIR), dataset_dir, f"{work}/manifest.parquet",
                       demo_weights.IMAGE_SIZE, configs.TRAIN_RATIO, configs.VALIDATION_RATIO,
                       configs.TEST_RATIO, configs.SEED)
        results = []
        for seed in args.seeds:
            for views in args.views:
                out = subprocess.run(
                    [sys.executable, "-m", "bench.head_phase", "--epochs", str(args.epochs),
                     "--arm", f"{dataset_dir},{views},{seed}"],
                    capture_output=True, text=True, check=True).stdout
                result = json.loads(out.split("ARM ", 1)[1])
                results.append(result)
                print(json.dumps(result), flush=True)
    print("\nviews  seed  head phase s  vs views=0  best val acc  test acc")
    for result in results:
        [base] = [r["seconds"] for r in results if r["views"] == 0 and r["seed"] ==
                  result["seed"]] or [float("nan")]
        print(f"{result['views']:5d}  {result['seed']:4d}  {result['seconds']:12.1f}  "
              f"{base / result['seconds']:9.2f}x  {result['val_accuracy']:12.3f}  "
              f"{result['test_accuracy']:8.3f}")


if __name__ == "__main__":
    main()
