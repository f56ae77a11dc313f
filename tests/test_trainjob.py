"""The TrainJob train and fine_tune create for train_nodes > 1 (components/trainjob.py), against
a small fake Kubernetes API server started here: it records what is created, answers a
scripted series of statuses and, when the job completes, writes the outputs as the chief
node would. The TrainJob is also checked against Kubeflow Trainer's CRD schema (v2.2.0,
trimmed: tests/schemas/trim_trainjob_crd.py)."""
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
from kubernetes import client

from components import configs, storage, trainjob
from components.errors import TlpError
from local_servers import JsonHandler, JsonServer, serving
from pipelines.pipeline import ClusterOptions

SCHEMA = json.loads((Path(__file__).parent / "schemas" /
                     "trainer-trainjob-v1alpha1.json").read_text())
NAMESPACE = "kubeflow-user-example-com"
PREFIX = f"/apis/{configs.TRAINJOB_GROUP}/{configs.TRAINJOB_VERSION}/namespaces/{NAMESPACE}/" \
         f"{configs.TRAINJOB_PLURAL}"


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": "True", "reason": reason or kind, "message": message,
            "lastTransitionTime": "2026-12-04T12:00:00Z"}


RUNNING = {"conditions": [condition("Created", "JobsCreationSucceeded")],
           "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0,
                           "failed": 0, "suspended": 0}]}
COMPLETE = {"conditions": [condition("Created", "JobsCreationSucceeded"),
                           condition("Complete", "Completed", "jobset completed successfully")]}
FAILED = {"conditions": [condition("Created", "JobsCreationSucceeded"),
                         condition("Failed", "FailedJobs",
                                   "jobset failed due to one or more job failures")]}


class FakeApi(JsonServer):
    """The TrainJob endpoints of one namespace: POST creates, GET answers the next status of
    `script` (then stays at the last), DELETE removes. `forbidden` answers 403 to all."""

    def __init__(self, script: list[dict], on_complete=None):
        super().__init__(Handler)
        self.jobs: dict[str, dict] = {}
        self.created: list[dict] = []
        self.script, self.on_complete, self.forbidden = list(script), on_complete, False


class Handler(JsonHandler):
    server: FakeApi

    def _route(self, method: str) -> str | None:
        """The job's name (or '' for the collection); None (and a 404 sent) elsewhere."""
        self.server.requests.append((method, self.path))
        if self.server.forbidden:
            self._answer(403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
            return None
        if not self.path.split("?")[0].startswith(PREFIX):
            self._answer(404, {"kind": "Status", "code": 404})
            return None
        return self.path.split("?")[0][len(PREFIX):].strip("/")

    def do_POST(self):
        if self._route("POST") is None:
            return
        body = self._json_body()
        name = body["metadata"]["name"]
        if name in self.server.jobs:
            return self._answer(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
        self.server.created.append(body)
        self.server.jobs[name] = body
        self._answer(201, body)

    def do_GET(self):
        name = self._route("GET")
        if name is None:
            return
        job = self.server.jobs.get(name)
        if job is None:
            return self._answer(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        if self.server.script:
            job["status"] = self.server.script.pop(0)
            if "Complete" in json.dumps(job["status"]) and self.server.on_complete:
                self.server.on_complete(job)
        self._answer(200, job)

    def do_DELETE(self):
        name = self._route("DELETE")
        if name is not None:
            self._answer(200, self.server.jobs.pop(name))


@pytest.fixture
def fake_api():
    with contextlib.ExitStack() as servers:
        def start(script, on_complete=None) -> FakeApi:
            return servers.enter_context(serving(FakeApi(script, on_complete)))

        yield start


def jobs_at(server: FakeApi) -> trainjob.TrainJobs:
    return trainjob.TrainJobs(NAMESPACE, client.ApiClient(client.Configuration(host=server.url)))


CLUSTER = ClusterOptions(
    gpu_count=8, gpu_node_selector={"tlp/pool": "h100"},
    gpu_tolerations=("nvidia.com/gpu:NoSchedule", "pool=h100:NoExecute"),
    resources={**configs.STEP_RESOURCES, "train": ("16", "128Gi")},
    image_registry="registry.example.com/ml", image_pull_secrets=("regcred",),
    s3_endpoint="http://minio-service.kubeflow:9000", s3_secret="tlp-object-store",
    train_nodes=4)


def write_outputs(job: dict) -> None:
    """What the chief node writes when done (node_training.run)."""
    spec = json.loads(job["spec"]["trainer"]["args"][0])
    for name, uri in spec["outputs"].items():
        if name == "tensorboard":
            storage.write_bytes(storage.join(uri, "train", "events.out"), b"events")
        else:
            storage.write_bytes(uri, f"{name} from the nodes".encode())


def train_artifacts(root: Path) -> dict:
    """The train step's artifacts as KFP gives them (local paths; URIs local here too, as
    storage.py treats them alike), model paths with the .keras the step adds."""
    names = {"dataset": "", "model": ".keras", "history": "", "tensorboard": "",
             "initial_model": ".keras"}
    return {name: SimpleNamespace(uri=str(root / "remote" / name) + suffix,
                                  path=str(root / "local" / name) + suffix)
            for name, suffix in names.items()}


def run_train(server: FakeApi, tmp_path: Path) -> dict:
    artifacts = train_artifacts(tmp_path)
    trainjob.run_step("train", {"backend": "jax", "epochs": 3}, artifacts, ("dataset",),
                      ("model", "history", "tensorboard", "initial_model"), ("tensorboard",),
                      str(tmp_path / "remote" / "model.state"), 4,
                      "8d2f1a6e-30c4-4b8e-9d1e-5a7f00c3e2b1", "train", jobs=jobs_at(server),
                      settings=CLUSTER.node_settings("train"), poll_seconds=0.01)
    return artifacts


def test_the_step_creates_a_trainjob_waits_and_collects_the_outputs(fake_api, tmp_path,
                                                                    capsys):
    server = fake_api([{}, RUNNING, RUNNING, COMPLETE], on_complete=write_outputs)
    artifacts = run_train(server, tmp_path)
    [job] = server.created
    jsonschema.validate(job, SCHEMA)
    name = "tlp-train-8d2f1a6e30c4"
    assert job["metadata"]["name"] == name
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["spec"]["runtimeRef"] == {"name": "jax-distributed"}
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4
    assert trainer["image"] == f"registry.example.com/ml/tlp-gpu:{configs.VERSION}"
    assert trainer["command"] == ["python3", "-m", "components.node_training"]
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
        "limits": {"nvidia.com/gpu": "8"}}
    assert trainer["env"] == [
        {"name": "AWS_ENDPOINT_URL_S3", "value": "http://minio-service.kubeflow:9000"},
        *({"name": key, "valueFrom": {"secretKeyRef": {"name": "tlp-object-store", "key": key}}}
          for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
        {"name": configs.REQUIRE_GPU_ENV, "value": "8"}]
    [patch] = job["spec"]["runtimePatches"]
    assert patch["manager"] == configs.TRAINJOB_PATCH_MANAGER
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["spec"]["template"]["spec"] == {
        "nodeSelector": {"tlp/pool": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "pool", "operator": "Equal", "value": "h100",
                         "effect": "NoExecute"}],
        "imagePullSecrets": [{"name": "regcred"}]}
    # The nodes get the step, its parameters and where to read and write.
    spec = json.loads(trainer["args"][0])
    handoff = str(tmp_path / "remote" / "model.keras") + trainjob.OUTPUTS_SUFFIX
    assert spec == {"step": "train", "parameters": {"backend": "jax", "epochs": 3},
                    "inputs": {"dataset": str(tmp_path / "remote" / "dataset")},
                    "outputs": {"model": f"{handoff}/model.keras",
                                "history": f"{handoff}/history",
                                "tensorboard": f"{handoff}/tensorboard",
                                "initial_model": f"{handoff}/initial_model.keras"},
                    "state": str(tmp_path / "remote" / "model.state")}
    # Waited for (polled until complete), the outputs collected, the hand-off removed.
    assert [method for method, _ in server.requests] == ["GET", "POST"] + ["GET"] * 4
    assert Path(artifacts["model"].path).read_text() == "model from the nodes"
    assert Path(artifacts["initial_model"].path).read_text() == "initial_model from the nodes"
    assert Path(artifacts["tensorboard"].path, "train", "events.out").read_bytes() == b"events"
    assert not Path(handoff).exists()
    out = capsys.readouterr().out
    assert f"created {NAMESPACE}/{name}: 4 node(s)" in out
    assert f"kubectl -n {NAMESPACE} logs -f --prefix --all-containers " \
           f"-l jobset.sigs.k8s.io/jobset-name={name}" in out
    assert f"{name}: Created (node: active 2, failed 0, ready 2, succeeded 0, " \
           "suspended 0)" in out
    assert f"{name}: Complete, Created" in out


def test_a_failed_trainjob_fails_the_step_with_its_reason(fake_api, tmp_path):
    server = fake_api([RUNNING, FAILED])
    with pytest.raises(TlpError) as error:
        run_train(server, tmp_path)
    assert "TrainJob kubeflow-user-example-com/tlp-train-8d2f1a6e30c4 failed: FailedJobs: " \
           "jobset failed due to one or more job failures (its nodes' logs: kubectl" \
           in str(error.value)


def test_a_retry_replaces_a_failed_trainjob_and_follows_a_running_one(fake_api, tmp_path):
    name = "tlp-train-8d2f1a6e30c4"
    server = fake_api([FAILED, COMPLETE], on_complete=write_outputs)
    server.jobs[name] = {"metadata": {"name": name}, "spec": {}}
    run_train(server, tmp_path)
    assert [method for method, _ in server.requests][:3] == ["GET", "DELETE", "GET"]
    [job] = server.created  # Created again, with the same name: its nodes resume.
    # The step's own pod died while its TrainJob ran: the retry follows that one.
    server = fake_api([RUNNING, RUNNING, COMPLETE], on_complete=write_outputs)
    server.jobs[name] = job
    run_train(server, tmp_path)
    assert not server.created and "POST" not in [method for method, _ in server.requests]


def test_missing_permission_names_the_role_to_apply(fake_api, tmp_path):
    server = fake_api([])
    server.forbidden = True
    with pytest.raises(TlpError, match="not allowed to get trainer.kubeflow.org/v1alpha1 "
                                       "TrainJobs in namespace kubeflow-user-example-com: give "
                                       "the pipeline's service account the Role in "
                                       "k8s/base/trainjob-rbac.yaml"):
        run_train(server, tmp_path)


def test_without_trainjob_settings_the_step_says_it_needs_a_cluster(monkeypatch):
    monkeypatch.delenv(configs.TRAINJOB_SETTINGS_ENV, raising=False)
    with pytest.raises(TlpError, match="not compiled for a cluster"):
        trainjob.NodeSettings.from_environment()


def test_job_names_are_dns_labels_from_the_run_and_task():
    assert trainjob.job_name("8d2f1a6e-30c4-4b8e-9d1e-5a7f00c3e2b1", "fine-tune") \
        == "tlp-fine-tune-8d2f1a6e30c4"
    name = trainjob.job_name("RUN_ID_With_Odd_Chars!", "A very long task name indeed")
    assert name == "tlp-a-very-long-task-runidwithodd"
    assert len(name) <= trainjob.MAX_NAME_LENGTH


def test_a_cpu_only_trainjob_has_no_gpu_and_no_gpu_scheduling():
    """--gpu-count 0: CPU nodes, in the CPU image, anywhere."""
    settings = ClusterOptions(gpu_count=0, train_nodes=2).node_settings("fine_tune")
    job = trainjob.manifest("tlp-fine-tune-1", 2, settings, {"step": "fine_tune"})
    jsonschema.validate(job, SCHEMA)
    assert job["spec"]["trainer"]["resourcesPerNode"] == {
        "requests": dict(zip(("cpu", "memory"), configs.STEP_RESOURCES["fine_tune"]))}
    assert job["spec"]["trainer"]["image"] == configs.CPU_IMAGE
    assert "runtimePatches" not in job["spec"] and "env" not in job["spec"]["trainer"]


def test_the_schema_catches_a_misspelt_trainjob_field():
    job = trainjob.manifest("tlp-train-1", 2, CLUSTER.node_settings("train"), {},
                            service_account="default-editor")
    jsonschema.validate(job, SCHEMA)
    job["spec"]["trainer"]["numNode"] = job["spec"]["trainer"].pop("numNodes")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, SCHEMA)
    job["spec"]["trainer"]["numNodes"] = job["spec"]["trainer"].pop("numNode")
    pod = (job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
           ["replicatedJobs"][0]["template"]["spec"]["template"]["spec"])
    assert pod["serviceAccountName"] == "default-editor"
    pod["nodeSelectors"] = pod.pop("nodeSelector")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job, SCHEMA)


def test_a_launcher_step_run_with_one_node_says_how_to_fix_it(monkeypatch, tmp_path):
    """Compiled with --train-nodes 4 the steps have no GPU: run with train_nodes=1 they stop
    rather than train on the CPU."""
    from components import steps

    monkeypatch.setenv(configs.TRAINJOB_SETTINGS_ENV, CLUSTER.node_settings("train").to_json())
    values = {**train_artifacts(tmp_path), "train_nodes": 1, "backend": "jax"}
    with pytest.raises(TlpError, match="train_nodes=1, but this pipeline was compiled with "
                                       "--train-nodes > 1"):
        steps.run("train", values)
