"""`tlp submit` against a small local stand-in for the KFP v2beta1 REST API: the calls
kfp.Client makes (healthz, experiments, runs), recorded so the tests can check what the
cluster would receive."""
import json
from urllib.parse import parse_qs, urlsplit

import kfp
import pytest
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from components import configs
from local_servers import JsonHandler, JsonServer, free_port, serving
from pipelines import cli

API = "/apis/v2beta1"


class FakeKfp(JsonServer):
    """Answers like the KFP API server: one experiment store, one run whose state goes
    RUNNING, then final_state. create_run_status: the status POST /runs answers with."""

    def __init__(self, final_state="SUCCEEDED", create_run_status=200):
        super().__init__(Handler)
        self.final_state, self.create_run_status = final_state, create_run_status
        self.experiments: list[dict] = []
        self.run_polls = 0

    def calls(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if (r["method"], r["path"]) == (method, API + path)]


class Handler(JsonHandler):
    server: FakeKfp

    def _record(self) -> dict:
        url = urlsplit(self.path)
        request = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                   "authorization": self.headers.get("Authorization"),
                   "body": self._json_body()}
        self.server.requests.append(request)
        return request

    def do_GET(self):
        request, server = self._record(), self.server
        if request["path"] == f"{API}/healthz":
            return self._answer(200, {"multi_user": False})
        if request["path"] == f"{API}/experiments":
            wanted = json.loads(request["query"]["filter"][0])["predicates"][0]["stringValue"]
            return self._answer(200, {"experiments": [
                e for e in server.experiments if e["display_name"] == wanted]})
        if request["path"] == f"{API}/runs/run-1":
            server.run_polls += 1
            state = "RUNNING" if server.run_polls == 1 else server.final_state
            return self._answer(200, {"run_id": "run-1", "state": state})
        self._answer(404, {"error": f"no route {request['path']}"})

    def do_POST(self):
        request, server = self._record(), self.server
        if request["path"] == f"{API}/experiments":
            experiment = {**request["body"], "experiment_id": f"exp-{len(server.experiments)}"}
            server.experiments.append(experiment)
            return self._answer(200, experiment)
        if request["path"] == f"{API}/runs":
            if server.create_run_status != 200:
                return self._answer(server.create_run_status, {"error": "permission denied"})
            return self._answer(200, {**request["body"], "run_id": "run-1", "state": "PENDING"})
        self._answer(404, {"error": f"no route {request['path']}"})


@pytest.fixture
def kfp_server(request, monkeypatch, tmp_path):
    # No user's kfp context file, no token file, no waiting between polls.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    monkeypatch.setattr(configs, "SUBMIT_POLL_SECONDS", 0.01)
    with serving(FakeKfp(**getattr(request, "param", {}))) as server:
        yield server


def test_submit_sends_the_compiled_spec_and_parameters(kfp_server, monkeypatch, capsys):
    monkeypatch.setenv("KFP_TOKEN", "secret-token")
    code = cli.main(["submit", "--host", kfp_server.url, "--experiment", "flowers",
                     "--run-name", "first", "--namespace", "team-a",
                     "--pipeline-root", "gs://bucket/root", "--data-dir", "gs://bucket/flowers",
                     "--epochs", "3", "--gpu-count", "2", "--gpu-node-selector", "pool=gpu",
                     "--image-registry", "eu.gcr.io/acme"])
    assert code == 0
    assert f"run: {kfp_server.url}/#/runs/details/run-1" in capsys.readouterr().out
    assert {r["authorization"] for r in kfp_server.requests} == {"Bearer secret-token"}
    [lookup] = kfp_server.calls("GET", "/experiments")
    assert lookup["query"]["namespace"] == ["team-a"]
    [created] = kfp_server.calls("POST", "/experiments")
    assert created["body"] == {"display_name": "flowers", "namespace": "team-a"}
    [run] = [r["body"] for r in kfp_server.calls("POST", "/runs")]
    assert (run["display_name"], run["experiment_id"]) == ("first", "exp-0")
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    parameters = run["runtime_config"]["parameters"]
    assert parameters["data_dir"] == "gs://bucket/flowers" and parameters["epochs"] == 3
    assert parameters["backbone"] == configs.BACKBONE
    spec = json_format.ParseDict(run["pipeline_spec"]["pipeline_spec"],
                                 pipeline_spec_pb2.PipelineSpec())
    assert set(parameters) == set(spec.root.input_definitions.parameters)
    train = spec.deployment_spec["executors"]["exec-train"]["container"]
    assert train["image"] == f"eu.gcr.io/acme/tlp-gpu:{configs.VERSION}"
    assert train["resources"]["accelerator"]["resourceCount"] == "2"
    platform = json_format.ParseDict(run["pipeline_spec"]["platform_spec"],
                                     pipeline_spec_pb2.PlatformSpec())
    train_k8s = json_format.ParseDict(
        json_format.MessageToDict(platform.platforms["kubernetes"].deployment_spec
                                  .executors["exec-train"]),
        kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    assert dict(train_k8s.node_selector.labels) == {"pool": "gpu"}
    assert not kfp_server.calls("GET", "/runs/run-1")  # No --wait: no polling.


@pytest.mark.parametrize("kfp_server, code", [({"final_state": "SUCCEEDED"}, 0),
                                              ({"final_state": "FAILED"}, 1)],
                         indirect=["kfp_server"])
def test_wait_follows_the_run_to_its_end(kfp_server, tmp_path, monkeypatch, capsys, code):
    token = tmp_path / "token"  # The projected service-account token of an in-cluster pod.
    token.write_text("pod-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert cli.main(["submit", "--host", kfp_server.url, "--wait",
                     "--data-dir", "gs://bucket/flowers"]) == code
    assert f"final state: {kfp_server.final_state}" in capsys.readouterr().out
    assert kfp_server.run_polls == 2  # RUNNING, then the final state.
    assert kfp_server.calls("GET", "/healthz")  # No namespace given: asks if multi-user.
    assert {r["authorization"] for r in kfp_server.requests} == {"Bearer pod-token"}
    [run] = [r["body"] for r in kfp_server.calls("POST", "/runs")]
    assert run["display_name"].startswith(configs.PIPELINE_NAME)
    assert "pipeline_root" not in run["runtime_config"]  # The namespace's default root.


@pytest.mark.parametrize("kfp_server", [{"create_run_status": 403}], indirect=True)
def test_an_api_error_is_one_message(kfp_server, capsys):
    assert cli.main(["submit", "--host", kfp_server.url, "--data-dir", "gs://b/d"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"tlp: error: the KFP API at {kfp_server.url} answered 403")
    assert "permission denied" in error


def test_an_unreachable_host_is_one_message(capsys):
    host = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["submit", "--host", host, "--namespace", "ns", "--data-dir", "gs://b/d"]) == 2
    assert f"tlp: error: cannot reach the KFP API at {host}" in capsys.readouterr().err
