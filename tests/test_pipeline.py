"""The compiled pipeline, checked against expectations, and one local run of all of it."""
import json
import math

import pyarrow.parquet as pq
import yaml
from google.protobuf import json_format
from kfp import compiler
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.pipeline import create_pipeline

STEPS = ["preprocess", "train", "fine-tune", "evaluate", "export"]


def compile_spec(tmp_path, **kwargs) -> tuple[pipeline_spec_pb2.PipelineSpec,
                                              pipeline_spec_pb2.PipelineDeploymentConfig]:
    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(create_pipeline(**kwargs), str(path))
    spec = json_format.ParseDict(yaml.safe_load(path.read_text()),
                                 pipeline_spec_pb2.PipelineSpec())  # Strict: no unknown fields.
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    return spec, deployment


def ordered_tasks(spec: pipeline_spec_pb2.PipelineSpec) -> list[str]:
    """Tasks in dependency order, the condition's tasks in place of the condition."""
    tasks = dict(spec.root.dag.tasks)
    for name, task in list(tasks.items()):
        if name.startswith("condition"):
            inner = spec.components[task.component_ref.name].dag.tasks
            tasks.update({n: t for n, t in inner.items()})
            for t in inner.values():
                t.dependent_tasks.extend(task.dependent_tasks)
            del tasks[name]
    order = []
    while len(order) < len(tasks):
        ready = sorted(n for n, t in tasks.items()
                       if n not in order and set(t.dependent_tasks) <= set(order))
        assert ready, f"dependency cycle among {tasks.keys()}"
        order.extend(ready)
    return order


def test_five_tasks_in_order_with_export_behind_the_gate(tmp_path):
    spec, _ = compile_spec(tmp_path)
    assert ordered_tasks(spec) == STEPS
    [condition] = [t for n, t in spec.root.dag.tasks.items() if n.startswith("condition")]
    assert "evaluate-Output" in condition.trigger_policy.condition
    assert "evaluate" in condition.dependent_tasks
    inputs = spec.root.input_definitions.parameters
    assert "data_dir" in inputs and not inputs["data_dir"].HasField("default_value")
    assert inputs["min_test_accuracy"].default_value.number_value == 0.5


def test_gpu_requests_on_train_and_fine_tune_only(tmp_path):
    spec, deployment = compile_spec(tmp_path, gpu_count=2, gpu_resource="nvidia.com/gpu")
    for task in STEPS:
        container = deployment.executors[f"exec-{task}"].container
        if task in ("train", "fine-tune"):
            assert container.resources.accelerator.resource_type == "nvidia.com/gpu"
            assert container.resources.accelerator.resource_count == "2"
            assert container.image.endswith("tlp-gpu:0.1.0")
        else:
            assert not container.resources.HasField("accelerator")
            assert container.image.endswith("tlp-cpu:0.1.0")


def test_no_gpu_request_when_gpu_count_is_zero(tmp_path):
    _, deployment = compile_spec(tmp_path, gpu_count=0)
    assert not deployment.executors["exec-train"].container.resources.HasField("accelerator")


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
    assert history["epoch"] == [2]
    evaluation = local_run.evaluation
    assert 0 <= evaluation["accuracy"] <= 1 and math.isfinite(evaluation["test_loss"])
    matrix = evaluation["confusion_matrix"]
    assert sum(map(sum, matrix)) == metadata["num_examples"]["test"]
    assert evaluation["export_approved"] is True
    report = local_run.report.read_text()
    assert "data:image/png;base64," in report and "Confusion matrix" in report
    model = local_run.exported_model
    assert (model / "saved_model" / "saved_model.pb").is_file()
    assert (model / "model.keras").is_file()
    assert (model / "labels.txt").read_text().split() == ["blue", "green", "red"]
