"""The compiled pipeline, checked against expectations, and one local run of all of it."""
import json
import math

import keras
import pyarrow.parquet as pq
import yaml
from google.protobuf import json_format
from kfp import compiler
from kfp.pipeline_spec import pipeline_spec_pb2

from components import backbones  # noqa: F401  Registers the layer saved models use.
from pipelines.pipeline import add_preprocess, create_pipeline

STEPS = ["preprocess", "train", "fine-tune", "evaluate", "export", "register"]


def compile_spec(tmp_path, cluster=None) -> tuple[pipeline_spec_pb2.PipelineSpec,
                                                  pipeline_spec_pb2.PipelineDeploymentConfig]:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(create_pipeline(cluster), str(path))
    # The first YAML document; a second one holds the Kubernetes settings (test_cluster.py).
    spec = json_format.ParseDict(next(yaml.safe_load_all(path.read_text())),
                                 pipeline_spec_pb2.PipelineSpec())  # Strict: no unknown fields.
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return spec, deployment


def ordered_tasks(spec: pipeline_spec_pb2.PipelineSpec) -> list[str]:
    """Tasks in dependency order, the conditions' tasks (nested ones too) in place of the
    condition."""
    tasks = dict(spec.root.dag.tasks)
    while conditions := [name for name in tasks if name.startswith("condition")]:
        for name in conditions:
            task = tasks.pop(name)
            inner = spec.components[task.component_ref.name].dag.tasks
            tasks.update({n: t for n, t in inner.items()})
            for t in inner.values():
                t.dependent_tasks.extend(task.dependent_tasks)
    order = []
    while len(order) < len(tasks):
        ready = sorted(n for n, t in tasks.items()
                       if n not in order and set(t.dependent_tasks) <= set(order))
        assert ready, f"dependency cycle among {tasks.keys()}"
        order.extend(ready)
    return order


def test_six_tasks_in_order_with_export_behind_the_gate(tmp_path):
    spec, _ = compile_spec(tmp_path)
    assert ordered_tasks(spec) == STEPS
    [condition] = [t for n, t in spec.root.dag.tasks.items() if n.startswith("condition")]
    assert "evaluate-Output" in condition.trigger_policy.condition
    assert "evaluate" in condition.dependent_tasks
    # register: behind the gate, and only with a model registry; it gets export's URI.
    approved = spec.components[condition.component_ref.name].dag.tasks
    [registry] = [t for n, t in approved.items() if n.startswith("condition")]
    assert "model_registry" in registry.trigger_policy.condition
    register = spec.components[registry.component_ref.name].dag.tasks["register"]
    assert register.inputs.parameters["published"].component_input_parameter \
        == "pipelinechannel--export-Output"
    inputs = spec.root.input_definitions.parameters
    assert "data_dir" in inputs and not inputs["data_dir"].HasField("default_value")
    assert inputs["min_test_accuracy"].default_value.number_value == 0.5
    assert inputs["top_k"].default_value.number_value == 3
    assert inputs["baseline_model"].default_value.string_value == ""
    assert inputs["export_destination"].default_value.string_value == ""
    # image_size 0 (the backbone's native size) is resolved by preprocess, given the backbone.
    assert inputs["image_size"].default_value.number_value == 0
    preprocess = spec.root.dag.tasks["preprocess"].inputs.parameters
    assert preprocess["backbone"].component_input_parameter == "backbone"
    assert preprocess["image_size"].component_input_parameter == "image_size"


def test_local_run_produces_every_artifact(local_run):
    run = local_run.run_dir

    def one(pattern):
        [path] = list(run.glob(pattern))
        return path

    dataset = one("**/preprocess/dataset")
    metadata = json.loads((dataset / "metadata.json").read_text())
    assert metadata["class_names"] == ["blue", "green", "red"]
    for split in ("train", "validation", "test"):
        assert list(dataset.glob(f"{split}-00000-of-*.tfrecord"))
    manifest = pq.read_table(one("**/preprocess/manifest")).to_pylist()
    assert len(manifest) == 31
    [broken] = [r for r in manifest if r["status"] == "rejected"]
    assert broken["source_path"].endswith("broken.jpg") and broken["reason"] == "unreadable"
    summary = metadata["summary"]
    assert (summary["inputs"], summary["written"], summary["rejected"]) == (31, 30, 1)
    outputs = json.loads(one("**/preprocess/executor_output.json").read_text())["artifacts"]
    assert outputs["summary"]["artifacts"][0]["metadata"] == summary  # The KFP Metrics.
    assert one("**/train/model.keras").is_file()
    assert one("**/fine-tune/model.keras").is_file()
    history = json.loads(one("**/fine-tune/history").read_text())
    assert history["epoch"] == [2] and history["epoch_seconds"][0] > 0
    evaluation = local_run.evaluation
    # The model before training (saved by train) evaluated on the same test split.
    assert one("**/train/initial_model.keras").is_file()
    initial = evaluation["initial"]
    assert initial["num_examples"] == evaluation["num_examples"]
    assert sum(map(sum, initial["confusion_matrix"])) == metadata["num_examples"]["test"]
    logged = json.loads(one("**/evaluate/executor_output.json").read_text())["artifacts"]
    logged = logged["metrics"]["artifacts"][0]["metadata"]
    assert logged["initial_test_accuracy"] == initial["accuracy"]
    assert logged["test_accuracy"] == evaluation["accuracy"]
    assert 0 <= evaluation["accuracy"] <= 1 and math.isfinite(evaluation["loss"])
    matrix = evaluation["confusion_matrix"]
    assert sum(map(sum, matrix)) == metadata["num_examples"]["test"]
    assert evaluation["gate"]["approved"] is True
    assert "no baseline" in evaluation["gate"]["reason"]
    assert evaluation["top_k"] == 2 and "expected_calibration_error" in evaluation
    report = local_run.report.read_text()
    for part in ('alt="training curves"', 'alt="confusion matrix"', "macro avg",
                 "weighted avg", "Most confidently wrong", "<th>before training</th>"):
        assert part in report
    model = local_run.exported_model
    assert (model / "saved_model" / "saved_model.pb").is_file()
    served = keras.models.load_model(model / "model.keras")
    trained = keras.models.load_model(one("**/fine-tune/model.keras"))
    assert "augmentation" in [layer.name for layer in trained.layers]
    assert "augmentation" not in [layer.name for layer in served.layers]
    assert (model / "labels.txt").read_text().split() == ["blue", "green", "red"]
    card = json.loads((model / "model_card.json").read_text())
    assert card["model"]["backbone"] == "MobileNetV2"
    assert card["test_metrics"]["accuracy"] == evaluation["accuracy"]
    assert card["training"]["fine_tune"]["epochs"] == 1
    assert card["training"]["train"]["seconds"] > 0
    assert card["initial_test_metrics"]["accuracy"] == initial["accuracy"]
    assert card["tflite"]["model.tflite"]["top1_agreement"] == 1
    assert (model / "model_quantized.tflite").is_file()


def test_preprocess_fan_out_runs_locally_and_matches_one_step(tmp_path, image_folder):
    """The fan-out's own tasks, wired as in the pipeline, run with kfp.local."""
    from kfp import dsl, local

    from components import configs, preprocess

    params = dict(image_size=32, train_ratio=0.6, validation_ratio=0.2, test_ratio=0.2,
                  seed=1, resize_mode="stretch", image_format="raw", num_workers=1, shard_size_mb=1,
                  min_images_per_class=1, max_rejected_fraction=0.1,
                  max_image_pixels=configs.MAX_IMAGE_PIXELS, previous_manifest="",
                  near_duplicate_distance=configs.NEAR_DUPLICATE_DISTANCE)

    @dsl.pipeline(name="fan-out")
    def fan_out(data_dir: str):
        add_preprocess(2, dict(data_dir=data_dir, backbone="MobileNetV2", **params))

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"))
    fan_out(data_dir=str(image_folder))
    assert len(list((tmp_path / "root").glob("fan-out-*/for-loop-*/preprocess-group/part"))) == 2
    [dataset] = (tmp_path / "root").glob("fan-out-*/preprocess-merge/dataset")
    preprocess.run(str(image_folder), str(tmp_path / "one"), str(tmp_path / "m.parquet"),
                   **params)
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}


def test_image_size_0_reaches_preprocess_and_the_model_at_the_native_size(tmp_path,
                                                                          image_folder):
    """Both forms of the preprocess step resolve image_size 0 to EfficientNetB1's 240 px,
    which the shards hold and the train step builds its model at (from the metadata)."""
    from kfp import dsl, local

    from components import model as model_lib, tfrecords

    params = dict(backbone="EfficientNetB1", image_size=0, train_ratio=0.6,
                  validation_ratio=0.2, test_ratio=0.2, seed=1, resize_mode="stretch",
                  image_format="jpeg", num_workers=1, shard_size_mb=1, min_images_per_class=1,
                  max_rejected_fraction=0.1, max_image_pixels=1_000_000, previous_manifest="",
                  near_duplicate_distance=0, tfds_data_dir="", tfds_splits="")

    @dsl.pipeline(name="native-size")
    def native_size(data_dir: str):
        add_preprocess(1, dict(data_dir=data_dir, **params))
        add_preprocess(2, dict(data_dir=data_dir, **params))

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"))
    native_size(data_dir=str(image_folder))
    datasets = sorted((tmp_path / "root").glob("native-size-*/preprocess*/dataset"))
    assert [d.parent.name for d in datasets] == ["preprocess", "preprocess-merge"]
    for dataset in datasets:
        metadata = tfrecords.read_metadata(dataset)
        assert metadata["image_size"] == 240
        images, _ = next(iter(tfrecords.load_split(dataset, "train", 4, training=False)))
        assert images.shape[1:] == (240, 240, 3)
    model = model_lib.build_model(metadata["num_classes"], "EfficientNetB1",
                                  metadata["image_size"], "none")
    assert model.input_shape == (None, 240, 240, 3)


def test_tuned_local_run_trains_with_the_best_trial(tmp_path, e2e_images, capsys):
    """`tlp run --local --tune-trials 2` on tiny data: two rounds (the configured trial and
    a drawn one on a ninth of the train split, then the best on a third), its parameters reach train
    and fine_tune, the trials table, its
    Metrics and the report's section exist, and the best configuration is printed and
    written as a config file that `tlp run` takes. (Export held back to keep it short.)"""
    from components import configs, tuning
    from conftest import E2E_ARGUMENTS
    from pipelines import cli

    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {log_uniform: [1e-3, 1e-2]}\n"
                     "fine_tune_layers: {choice: [5, 10]}\n"
                     "augment_scale: {uniform: [0.5, 1.5]}\n")
    arguments = {**E2E_ARGUMENTS, "min_test_accuracy": 1.01}
    assert cli.main(["run", "--local", "--pipeline-root", str(tmp_path / "root"),
                     "--data-dir", str(e2e_images), "--tune-trials", "2", "--tune-rounds", "2",
                     "--search-space", str(space)]
                    + [f"--{k.replace('_', '-')}={v}" for k, v in arguments.items()]) == 0
    out = capsys.readouterr().out
    assert "tuning: 2 trials in 2 round(s)" in out and "training steps" in out
    [run] = (tmp_path / "root").iterdir()
    table = json.loads(next(run.glob("tune-best/tuning")).read_text())
    assert [(r["round"], r["epochs"], r["fine_tune_epochs"], r["train_fraction"])
            for r in table["trials"]] == [(0, 1, 1, 0.1111)] * 2 + [(1, 1, 1, 0.3333)]
    round_1 = tuning.ranked(table["trials"][:2])
    assert table["trials"][2]["trial"] == round_1[0]["trial"]  # The best third of 2: one.
    best = table["best"]
    assert best == table["trials"][2] and table["complete"]
    # Round 1 trained on a ninth of the train split (of 8 images a class, 1: 3 images, one
    # batch of 8 an epoch), round 2 on a third (3 a class: 2 batches), train on all (3).
    log_1 = (run / "for-loop-1-iteration-0" / "logs" / "tune-trial.log").read_text()
    log_2 = (run / "for-loop-2-iteration-0" / "logs" / "tune-trial-2.log").read_text()
    assert "on 11% of the train split" in log_1 and " 1/1 - " in log_1
    assert "on 33% of the train split" in log_2 and " 2/2 - " in log_2
    assert " 3/3 - " in (run / "logs" / "train.log").read_text()
    assert set(best["params"]) == {"learning_rate", "fine_tune_layers", "augment_scale"}
    assert set(configs.TUNE_AUGMENT_SCALED) <= set(best["overrides"])
    # Trial 0 is the run's own configuration; the other, the sample step's seeded draw.
    dimensions = tuning.parse_space(tuning.load_space(space), "s", tuning.tunable_types())
    assert [r["params"] for r in table["trials"][:2]] == [
        {"learning_rate": configs.LEARNING_RATE, "fine_tune_layers": "10",
         "augment_scale": 1.0}, tuning.sample(dimensions, 1, configs.SEED)[0]]

    def outputs(step):
        return json.loads((run / step / "executor_output.json").read_text())["artifacts"]

    for step in ("train", "fine-tune"):
        [model] = outputs(step)["model"]["artifacts"]
        assert model["metadata"]["tuned"] == best["overrides"]
    assert "with the best trial's parameters" in (run / "logs" / "train.log").read_text()
    [metrics] = outputs("tune-best")["best_trial"]["artifacts"]
    assert metrics["metadata"]["val_accuracy"] == best["val_accuracy"]
    assert metrics["metadata"]["learning_rate"] == best["overrides"]["learning_rate"]
    report = next(run.glob("evaluate/report")).read_text()
    assert "<h2>Tuning (3 trials)</h2>" in report and 'alt="tuning trials"' in report
    config = run / configs.TUNED_CONFIG_FILE
    assert f"reuse it:      tlp run --local --config {config}" in out
    written = yaml.safe_load(config.read_text())
    assert written["learning_rate"] == best["overrides"]["learning_rate"]
    assert written["data_dir"] == str(e2e_images) and written["epochs"] == 1
    args = cli.build_parser().parse_args(["run", "--local", "--config", str(config)])
    assert cli.pipeline_arguments(args, local=True)["fine_tune_layers"] \
        == best["overrides"]["fine_tune_layers"]
