"""Vertex AI Pipelines as a target: the compiled pipeline (no Kubernetes settings, Vertex
accelerator names, CPU/memory limits), the options it refuses, and `tlp submit --target
vertex` through google-cloud-aiplatform, pointed at a small stand-in for the Vertex AI REST
API (and for the Cloud Storage bucket lookup PipelineJob.submit makes first)."""
import json
from urllib.parse import urlsplit

import google.auth
import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components import configs
from local_servers import JsonHandler, JsonServer, free_port, serving
from pipelines import cli
from pipelines.pipeline import ClusterOptions

JOBS = "/v1/projects/acme-ml/locations/europe-west4/pipelineJobs"
PROJECT_NUMBER = "123456789"
GPU_EXECUTORS = ("exec-train", "exec-fine-tune")


def compile_vertex(tmp_path, *flags) -> tuple[list[dict], pipeline_spec_pb2.PipelineSpec]:
    out = tmp_path / "vertex.yaml"
    assert cli.main(["compile", "-o", str(out), "--target", "vertex", *flags]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs, json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())


def test_the_vertex_pipeline_has_no_kubernetes_settings_and_vertex_gpus(tmp_path):
    docs, spec = compile_vertex(tmp_path, "--gpu-type", "NVIDIA_H100_80GB", "--gpu-count", "2",
                                "--cpu-request", "train=8")
    assert len(docs) == 1 and "platforms" not in docs[0]  # No kfp-kubernetes platform spec.
    for executor, config in spec.deployment_spec["executors"].items():
        resources = config["container"]["resources"]
        step = executor.removeprefix("exec-").replace("-", "_")
        cpu, memory = configs.STEP_RESOURCES[step]
        # Vertex picks each step's machine by its limits.
        assert (resources["resourceCpuLimit"], resources["resourceMemoryLimit"]) \
            == ("8" if step == "train" else cpu, memory)
        assert not {"resourceCpuRequest", "resourceMemoryRequest"} & set(resources)
        if executor in GPU_EXECUTORS:
            assert (resources["accelerator"]["resourceType"],
                    resources["accelerator"]["resourceCount"]) == ("NVIDIA_H100_80GB", "2")
        else:
            assert "accelerator" not in resources


def test_vertex_gpu_names_are_vertex_accelerator_types():
    from google.cloud.aiplatform_v1.types import AcceleratorType

    assert set(configs.VERTEX_GPU_TYPES) <= {a.name for a in AcceleratorType}
    assert configs.VERTEX_GPU_TYPE in configs.VERTEX_GPU_TYPES
    assert ClusterOptions(target="vertex").accelerator == configs.VERTEX_GPU_TYPE


@pytest.mark.parametrize("flags, message", [
    (["--gpu-node-selector", "pool=gpu"], "--gpu-node-selector: Kubeflow cluster settings"),
    (["--gpu-toleration", "nvidia.com/gpu:NoSchedule"], "--gpu-toleration: Kubeflow cluster"),
    (["--s3-endpoint", "http://minio:9000", "--s3-secret", "store"],
     "--s3-endpoint, --s3-secret: Kubeflow cluster settings"),
    (["--image-pull-secret", "regcred"], "--image-pull-secret: Kubeflow cluster settings"),
    (["--gpu-resource", "nvidia.com/gpu"], "--gpu-resource (on Vertex: --gpu-type)"),
    (["--gpu-type", "nvidia-l4"], "gpu type 'nvidia-l4' is not a Vertex AI GPU; choose one "
                                  "of NVIDIA_TESLA_T4"),
    (["--export-destination", "s3://models/flowers"],
     "export_destination=s3://models/flowers: Vertex AI Pipelines needs a gs://"),
])
def test_cluster_only_options_fail_clearly_on_vertex(tmp_path, capsys, flags, message):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "-o", str(out), "--target", "vertex", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_vertex_gpu_name_on_the_kfp_target_fails(tmp_path, capsys):
    assert cli.main(["compile", "-o", str(tmp_path / "p.yaml"), "--gpu-type", "NVIDIA_L4"]) == 2
    assert "is a Vertex AI accelerator name, for --target vertex" in capsys.readouterr().err


class FakeVertex(JsonServer):
    """Answers PipelineService's create and get calls, and the bucket lookup; a created job
    reports RUNNING once, then final_state. create_status: what creating a job answers."""

    def __init__(self, final_state="PIPELINE_STATE_SUCCEEDED", create_status=200):
        super().__init__(Handler)
        self.final_state, self.create_status = final_state, create_status
        self.polls = 0


class Handler(JsonHandler):
    server: FakeVertex

    def _route(self):
        url, body, server = urlsplit(self.path), self._json_body(), self.server
        server.requests.append({"method": self.command, "path": url.path, "query": url.query,
                                "body": body})
        if self.command == "GET" and url.path.startswith("/storage/v1/b/"):
            return self._answer(200, {"name": url.path.split("/")[4],
                                      "projectNumber": PROJECT_NUMBER})
        if (self.command, url.path) == ("POST", JOBS):
            if server.create_status != 200:
                return self._answer(server.create_status, {"error": {
                    "code": server.create_status, "status": "PERMISSION_DENIED",
                    "message": "Permission 'aiplatform.pipelineJobs.create' denied"}})
            return self._answer(200, {**body, "name": f"{JOBS[4:]}/run-1",
                                      "state": "PIPELINE_STATE_PENDING"})
        if (self.command, url.path) == ("GET", f"{JOBS}/run-1"):
            server.polls += 1
            state = "PIPELINE_STATE_RUNNING" if server.polls == 1 else server.final_state
            return self._answer(200, {"name": f"{JOBS[4:]}/run-1", "state": state})
        self._answer(404, {"error": {"code": 404, "message": f"no route {url.path}"}})

    do_GET = do_POST = _route


@pytest.fixture
def vertex_server(request, monkeypatch):
    # No real credentials or project: anonymous ones, for the fake servers only.
    monkeypatch.setattr(google.auth, "default",
                        lambda *args, **kwargs: (AnonymousCredentials(), "acme-ml"))
    monkeypatch.setattr(configs, "SUBMIT_POLL_SECONDS", 0.01)
    # PipelineJob.submit checks that the pipeline root's bucket is the project's: the bucket
    # (Cloud Storage's JSON API, via STORAGE_EMULATOR_HOST) comes from the fake server, the
    # project's number from here (Resource Manager, a gRPC API: not pointable at a local
    # server; unanswered, it retries for a minute).
    from google.cloud.aiplatform.utils import resource_manager_utils

    monkeypatch.setattr(resource_manager_utils, "get_project_number",
                        lambda project, credentials=None: PROJECT_NUMBER)
    server = FakeVertex(**getattr(request, "param", {}))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    with serving(server):
        yield server


def submit_argv(server: FakeVertex, *flags: str) -> list[str]:
    return ["submit", "--target", "vertex", "--project", "acme-ml", "--region", "europe-west4",
            "--api-endpoint", server.url, "--pipeline-root", "gs://acme-runs/root",
            "--data-dir", "gs://acme-data/flowers", *flags]


def test_submit_creates_a_pipeline_job(vertex_server, capsys):
    assert cli.main(submit_argv(
        vertex_server, "--run-name", "flowers", "--epochs", "3", "--gpu-type", "NVIDIA_L4",
        "--service-account", "runner@acme-ml.iam.gserviceaccount.com",
        "--export-destination", "gs://acme-models/flowers")) == 0
    assert "run: https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/" \
           "runs/run-1?project=acme-ml" in capsys.readouterr().out
    [create] = [r for r in vertex_server.requests if r["method"] == "POST"]
    job = create["body"]
    assert create["path"] == JOBS
    assert job["displayName"] == "flowers"
    assert job["serviceAccount"] == "runner@acme-ml.iam.gserviceaccount.com"
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://acme-runs/root"
    parameters = runtime["parameterValues"]
    assert parameters["data_dir"] == "gs://acme-data/flowers" and parameters["epochs"] == 3
    assert parameters["export_destination"] == "gs://acme-models/flowers"
    # The template: the pipeline compiled for Vertex, every parameter given a value.
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert set(parameters) == set(spec.root.input_definitions.parameters)
    train = spec.deployment_spec["executors"]["exec-train"]["container"]["resources"]
    assert train["accelerator"]["resourceType"] == "NVIDIA_L4"
    assert "platformSpec" not in job and "kubernetes" not in json.dumps(job)
    assert not vertex_server.polls  # No --wait: no polling.


@pytest.mark.parametrize("vertex_server, code", [
    ({"final_state": "PIPELINE_STATE_SUCCEEDED"}, 0),
    ({"final_state": "PIPELINE_STATE_FAILED"}, 1)], indirect=["vertex_server"])
def test_wait_follows_the_job_to_its_end(vertex_server, capsys, code):
    assert cli.main(submit_argv(vertex_server, "--wait")) == code
    assert f"final state: {vertex_server.final_state.removeprefix('PIPELINE_STATE_')}" \
        in capsys.readouterr().out
    assert vertex_server.polls == 2


@pytest.mark.parametrize("vertex_server", [{"create_status": 403}], indirect=True)
def test_an_api_error_is_one_message(vertex_server, capsys):
    assert cli.main(submit_argv(vertex_server)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"tlp: error: Vertex AI at {vertex_server.url} answered 403")
    assert "Permission 'aiplatform.pipelineJobs.create' denied" in error


@pytest.mark.parametrize("flags, message", [
    (["--pipeline-root", "s3://runs/root"], "--pipeline-root=s3://runs/root: Vertex AI "
                                            "Pipelines needs a gs://"),
    (["--host", "http://localhost:8080"], "give --project (and --region), not --host"),
])
def test_submit_refuses_what_vertex_cannot_run(vertex_server, capsys, flags, message):
    assert cli.main([*submit_argv(vertex_server), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not vertex_server.requests


def test_an_unreachable_endpoint_is_one_message(vertex_server, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"
    assert cli.main([*submit_argv(vertex_server), "--api-endpoint", endpoint]) == 2
    assert f"tlp: error: cannot reach Vertex AI at {endpoint}" in capsys.readouterr().err
