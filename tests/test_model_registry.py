"""The register step against a small stand-in for the Kubeflow Model Registry REST API (the
calls the official client makes: find and create registered models, model versions and
model artifacts), so the tests see what the registry would receive."""
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from components import configs, model_registry
from components.errors import TlpError
from local_servers import JsonHandler, JsonServer, free_port, serving

API = "/api/model_registry/v1"
CARD = {"model": {"backbone": "MobileNetV2", "image_size": 96},
        "data": {"class_names": ["cat", "dog"]},
        "test_metrics": {"num_examples": 20, "loss": 0.25, "accuracy": 0.9,
                         "per_class": {"cat": {"recall": 1.0}}},
        "versions": {"tensorflow": "2.21.0", "tlp": configs.VERSION}}
SOURCE = model_registry.Source(run_id="run-1", run_name="flowers-run", namespace="team-a")
PUBLISHED = "gs://models/flowers/3"


class FakeRegistry(JsonServer):
    """Keeps registered models, versions and artifacts in lists, as the server would.
    fail: (method, path) -> (status, message) answered instead."""

    def __init__(self):
        super().__init__(Handler)
        self.store: dict[str, list[dict]] = {"models": [], "versions": [], "artifacts": []}
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}

    def add(self, kind: str, item: dict) -> dict:
        number = sum(len(items) for items in self.store.values()) + 1
        item = {**item, "id": str(number), "createTimeSinceEpoch": "1",
                "lastUpdateTimeSinceEpoch": "1"}
        self.store[kind].append(item)
        return item

    def find(self, kind: str, **fields) -> dict | None:
        return next((item for item in self.store[kind]
                     if all(item.get(k) == v for k, v in fields.items())), None)


class Handler(JsonHandler):
    server: FakeRegistry

    def _route(self):
        url, body = urlsplit(self.path), self._json_body()
        path = url.path.removeprefix(API)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        self.server.requests.append({"method": self.command, "path": path, "query": query,
                                     "body": body,
                                     "authorization": self.headers.get("Authorization")})
        failure = self.server.fail.get((self.command, path))
        if failure:
            return self._answer(failure[0], {"code": str(failure[0]), "message": failure[1]})
        server, found = self.server, None
        if (self.command, path) == ("GET", "/registered_models"):
            items = server.store["models"]
            return self._answer(200, {"items": items[:1], "size": len(items[:1]),
                                      "pageSize": 1, "nextPageToken": ""})
        if (self.command, path) == ("GET", "/registered_model"):
            found = server.find("models", name=query["name"])
        elif (self.command, path) == ("GET", "/model_version"):
            found = server.find("versions", name=query["name"],
                                registeredModelId=query["parentResourceId"])
        elif (self.command, path) == ("GET", "/model_artifact"):
            found = server.find("artifacts", name=query["name"],
                                modelVersionId=query["parentResourceId"])
        elif (self.command, path) == ("POST", "/registered_models"):
            return self._answer(201, server.add("models", body))
        elif (self.command, path) == ("POST", "/model_versions"):
            return self._answer(201, server.add("versions", body))
        elif self.command == "POST" and path.startswith("/model_versions/"):
            version = path.split("/")[2]
            return self._answer(201, server.add("artifacts", {**body, "modelVersionId": version}))
        if found is None:
            return self._answer(404, {"code": "404", "message": f"no {path} for {query}"})
        self._answer(200, found)

    do_GET = do_POST = _route


@pytest.fixture
def registry(monkeypatch, tmp_path):
    monkeypatch.setenv(configs.MODEL_REGISTRY_TOKEN_ENV, "registry-token")
    with serving(FakeRegistry()) as server:
        yield server


def properties(item: dict) -> dict:
    """Custom properties as plain values."""
    return {key: value.get("string_value", value.get("double_value"))
            for key, value in item.get("customProperties", {}).items()}


def test_register_creates_the_model_version_and_artifact(registry):
    result = model_registry.register(registry.url, "flowers", PUBLISHED, CARD, SOURCE)
    [model] = registry.store["models"]
    [version] = registry.store["versions"]
    [artifact] = registry.store["artifacts"]
    assert model["name"] == "flowers"
    assert (version["name"], version["registeredModelId"]) == ("3", model["id"])
    assert properties(version) == {
        "test_num_examples": 20.0, "test_loss": 0.25, "test_accuracy": 0.9,
        "backbone": "MobileNetV2", "classes": '["cat", "dog"]', "tensorflow_version": "2.21.0",
        "model_card": json.dumps(CARD)}
    assert {key: artifact.get(key) for key in (
        "artifactType", "uri", "modelFormatName", "modelFormatVersion", "modelSourceKind",
        "modelSourceClass", "modelSourceGroup", "modelSourceId", "modelSourceName",
        "modelVersionId")} == {
        "artifactType": "model-artifact", "uri": PUBLISHED, "modelFormatName": "tensorflow",
        "modelFormatVersion": "2", "modelSourceKind": "kfp", "modelSourceClass": "pipelinerun",
        "modelSourceGroup": "team-a", "modelSourceId": "run-1",
        "modelSourceName": "flowers-run", "modelVersionId": version["id"]}
    assert result == {"name": "flowers", "version": "3", "uri": PUBLISHED,
                      "model_registry_uri": "model-registry://flowers/3",
                      "registered_model_id": model["id"], "model_version_id": version["id"],
                      "model_artifact_id": artifact["id"], "created": True}
    # The token comes from the environment, never from a parameter.
    assert {r["authorization"] for r in registry.requests} == {"Bearer registry-token"}


def test_registering_the_same_version_twice_creates_nothing_new(registry):
    first = model_registry.register(registry.url, "flowers", PUBLISHED, CARD, SOURCE)
    posts = len([r for r in registry.requests if r["method"] == "POST"])
    again = model_registry.register(registry.url, "flowers", PUBLISHED, CARD, SOURCE)
    assert {**first, "created": False} == again
    assert len([r for r in registry.requests if r["method"] == "POST"]) == posts
    assert [len(items) for items in registry.store.values()] == [1, 1, 1]
    # The next published version is a new version of the same registered model.
    model_registry.register(registry.url, "flowers", "gs://models/flowers/4", CARD, SOURCE)
    assert [v["name"] for v in registry.store["versions"]] == ["3", "4"]
    assert len(registry.store["models"]) == 1


def test_a_version_registered_elsewhere_is_a_conflict(registry):
    model_registry.register(registry.url, "flowers", PUBLISHED, CARD, SOURCE)
    with pytest.raises(TlpError, match="version 3 of registered model 'flowers' already "
                                       f"exists with model artifact {PUBLISHED}, not"):
        model_registry.register(registry.url, "flowers", "s3://other/flowers/3", CARD, SOURCE)


def test_a_server_error_fails_with_the_servers_message(registry):
    registry.fail[("POST", "/model_versions")] = (500, "database is locked")
    with pytest.raises(TlpError, match=r"the model registry at http://127\.0\.0\.1:\d+ "
                                       r"answered 500 .*: database is locked"):
        model_registry.register(registry.url, "flowers", PUBLISHED, CARD, SOURCE)


def test_an_unreachable_registry_is_one_message(monkeypatch):
    monkeypatch.setenv(configs.MODEL_REGISTRY_TOKEN_ENV, "registry-token")
    server = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TlpError, match=f"cannot reach the model registry at {server}"):
        model_registry.register(server, "flowers", PUBLISHED, CARD, SOURCE)


@pytest.mark.parametrize("published, message", [
    ("/exports/flowers/3", "only a version published to a bucket"),
    ("gs://models/flowers/latest", "is not a published version"),
])
def test_only_published_bucket_versions_are_registered(published, message):
    with pytest.raises(TlpError, match=message):
        model_registry.version_name(published)


@pytest.mark.parametrize("server, name, destination, message", [
    ("model-registry:8080", "m", "gs://b/m", "write the server's URL"),
    ("http://mr:8080", "", "gs://b/m", "registered_model_name is empty"),
    ("http://mr:8080", "m", "/local/models", "must be a bucket"),
    ("http://mr:8080", "m", "", "must be a bucket"),
])
def test_validate_rejects_what_cannot_be_registered(server, name, destination, message):
    with pytest.raises(TlpError, match=message):
        model_registry.validate(server, name, destination)
    model_registry.validate("", name, destination)  # Off: nothing to check.


def test_namespace_from_the_environment_or_the_service_account(tmp_path, monkeypatch):
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(configs, "SERVICE_ACCOUNT_DIR", str(tmp_path))
    assert model_registry.current_namespace() == ""
    (tmp_path / "namespace").write_text("team-b\n")
    assert model_registry.current_namespace() == "team-b"
    monkeypatch.setenv("POD_NAMESPACE", "team-c")
    assert model_registry.current_namespace() == "team-c"


# The step runs in this environment, not in the image it names: meant here.
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_the_register_step_registers_what_export_published(registry, tmp_path):
    """The KFP component, run by kfp.local: the model card from export's folder, the run's id
    and name from KFP's placeholders."""
    from kfp import dsl, local

    from components import kfp_steps

    exported = tmp_path / "exported_model"
    exported.mkdir()
    (exported / configs.MODEL_CARD_FILE).write_text(json.dumps(CARD))

    @dsl.pipeline(name="register-only")
    def pipeline(server: str):
        model = dsl.importer(artifact_uri=str(exported), artifact_class=dsl.Model)
        kfp_steps.register(model_registry=server, registered_model_name="flowers",
                           published=PUBLISHED, exported_model=model.output,
                           run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                           run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "r"))
    pipeline(server=registry.url)
    [artifact] = registry.store["artifacts"]
    assert artifact["uri"] == PUBLISHED
    assert artifact["modelSourceName"].startswith("register-only")
    assert artifact["modelSourceId"]
    [version] = registry.store["versions"]
    assert json.loads(properties(version)["model_card"]) == CARD
    [saved] = (tmp_path / "r").glob("*/register/registration")
    assert json.loads(saved.read_text())["model_registry_uri"] == "model-registry://flowers/3"
