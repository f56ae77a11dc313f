"""The k8s/ kustomize tree: every manifest valid for Kubernetes (strict: no unknown fields),
the overlays rendered, the kfp-launcher providers config in the KFP launcher's format, and
the KServe InferenceService valid for KServe's CRD schema."""
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate

from components import configs

K8S = configs.REPO_ROOT / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
SERVING_OVERLAYS = sorted(p for p in (K8S / "serving" / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.32.0"
# kubernetes-validate knows no CRDs: the part of KServe's CRD schema k8s/serving uses, vendored
# (source, licence and how it was trimmed: tests/schemas/trim_kserve_crd.py).
KSERVE = "serving.kserve.io/v1beta1"
KSERVE_SCHEMA = json.loads((Path(__file__).parent / "schemas" /
                            "kserve-inferenceservice-v1beta1.json").read_text())


def validate(doc: dict) -> None:
    """Strictly (no unknown fields): KServe's InferenceService against its CRD's schema,
    everything else against Kubernetes' own."""
    if doc["apiVersion"] == KSERVE:
        assert doc["kind"] == "InferenceService"
        jsonschema.validate(doc, KSERVE_SCHEMA)
    else:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _secret_ref(*keys):
    return {"type": "object", "additionalProperties": False, "required": ["secretName", *keys],
            "properties": {k: {"type": "string"} for k in ("secretName", *keys)}}


def _credentials(*keys):
    return {"type": "object", "additionalProperties": False, "required": ["fromEnv"],
            "properties": {"fromEnv": {"type": "boolean"}, "secretRef": _secret_ref(*keys)}}


# The launcher's provider config, as its Go structs read it (kubeflow/pipelines
# backend/src/v2/config/s3.go and gcs.go): a misspelt key there is silently ignored.
PROVIDERS_SCHEMA = {"type": "object", "additionalProperties": False, "properties": {
    "s3": {"type": "object", "additionalProperties": False, "properties": {"default": {
        "type": "object", "additionalProperties": False, "required": ["credentials"],
        "properties": {"endpoint": {"type": "string"}, "region": {"type": "string"},
                       "disableSSL": {"type": "boolean"}, "forcePathStyle": {"type": "boolean"},
                       "maxRetries": {"type": "integer"},
                       "credentials": _credentials("accessKeyKey", "secretKeyKey")}}}},
    "gs": {"type": "object", "additionalProperties": False, "properties": {"default": {
        "type": "object", "additionalProperties": False, "required": ["credentials"],
        "properties": {"credentials": _credentials("tokenKey")}}}}}}


def _merge(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def render(folder: Path) -> list[dict]:
    """What `kustomize build folder` makes, for the features k8s/ uses: resources (files and
    folders), strategic-merge patches of maps, namespace. So no kustomize binary is needed."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources", "patches"}, \
        "k8s/ uses a kustomize feature this renderer does not know: extend render()"
    docs = []
    for ref in kustomization.get("resources", []):
        path = folder / ref
        docs += render(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
    for patch in kustomization.get("patches", []):
        change = yaml.safe_load((folder / patch["path"]).read_text())
        [target] = [d for d in docs if (d["kind"], d["metadata"]["name"])
                    == (change["kind"], change["metadata"]["name"])]
        _merge(target, change)
    if "namespace" in kustomization:
        for doc in docs:
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def _by_kind(docs: list[dict]) -> dict:
    return {doc["kind"]: doc for doc in docs}


def test_every_manifest_file_is_strictly_valid():
    files = [p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"]
    assert len(files) == 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            validate(doc)


def test_kustomizations_reference_files_that_exist():
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        refs = kustomization.get("resources", []) + [p["path"] for p in
                                                     kustomization.get("patches", [])]
        for ref in refs:
            assert (path.parent / ref).exists(), f"{path} names missing {ref}"
        listed = {(path.parent / ref).resolve() for ref in refs}
        assert {p.resolve() for p in path.parent.glob("*.yaml")} - {path.resolve()} <= listed


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_render_to_valid_manifests(overlay):
    docs = render(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == "kubeflow-user-example-com"
        assert doc["kind"] != "Secret"  # Credentials are referenced, never committed.
    launcher = _by_kind(docs)["ConfigMap"]
    assert launcher["metadata"]["name"] == "kfp-launcher"
    scheme = {"gcs": "gs", "s3": "s3"}[overlay.name]
    assert launcher["data"]["defaultPipelineRoot"].startswith(f"{scheme}://")
    providers = yaml.safe_load(launcher["data"]["providers"])
    jsonschema.validate(providers, PROVIDERS_SCHEMA)
    credentials = providers[scheme]["default"]["credentials"]
    if overlay.name == "gcs":  # Workload Identity: the pods' account acts for a Google one.
        assert credentials == {"fromEnv": True}
        account = _by_kind(docs)["ServiceAccount"]
        assert account["metadata"]["name"] == "default-editor"
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] \
            .endswith(".iam.gserviceaccount.com")
    else:
        assert credentials["fromEnv"] is False
        assert credentials["secretRef"]["secretName"] == "tlp-object-store"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS, ids=lambda p: p.name)
def test_serving_overlays_render_to_a_valid_inference_service(overlay):
    docs = render(overlay)
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "kubeflow-user-example-com"
        assert doc["kind"] != "Secret"  # Credentials are referenced, never committed.
    service, account = _by_kind(docs)["InferenceService"], _by_kind(docs)["ServiceAccount"]
    predictor = service["spec"]["predictor"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    # KServe's TensorFlow Serving runtime, REST v1: the protocol tlp predict --url speaks.
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow" and model["protocolVersion"] == "v1"
    # The export destination's root, under which the numbered versions are published.
    scheme = {"gcs": "gs", "s3": "s3"}[overlay.name]
    assert model["storageUri"].startswith(f"{scheme}://")
    assert not model["storageUri"].rstrip("/").rsplit("/", 1)[-1].isdigit()
    if overlay.name == "gcs":  # Workload Identity: the server's account acts for a Google one.
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] \
            .endswith(".iam.gserviceaccount.com")
    else:  # KServe reads the S3 key from a Secret the account lists.
        assert account["secrets"] == [{"name": "tlp-serving-s3"}]


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl: render() stands alone")
@pytest.mark.parametrize("overlay", OVERLAYS + SERVING_OVERLAYS,
                         ids=lambda p: p.relative_to(K8S).as_posix())
def test_render_matches_kubectl_kustomize(overlay):
    built = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True,
                           text=True, check=True, timeout=60).stdout
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(built), key=key) == sorted(render(overlay), key=key)


def test_a_strict_validator_catches_a_misspelt_field():
    config_map = yaml.safe_load((K8S / "base" / "kfp-launcher.yaml").read_text())
    config_map["metadata"]["label"] = config_map["metadata"].pop("labels")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"s3": {"default": {"endpont": "x", "credentials": {
            "fromEnv": True}}}}, PROVIDERS_SCHEMA)
    [service] = [d for d in render(SERVING_OVERLAYS[0]) if d["kind"] == "InferenceService"]
    model = service["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    with pytest.raises(jsonschema.ValidationError):
        validate(service)
    model["storageUri"] = model.pop("storageURI")
    model["modelFormat"] = {"version": "2"}  # Its name is required.
    with pytest.raises(jsonschema.ValidationError):
        validate(service)


def test_the_readme_serves_a_registered_version_by_model_registry_uri():
    """The README's ServingRuntime and InferenceService for a version the register step
    recorded: the InferenceService valid for KServe's CRD schema, asking for the runtime,
    which serves the format the step registers."""
    readme = (configs.REPO_ROOT / "README.md").read_text()
    [block] = [b for b in readme.split("```yaml\n")[1:] if "model-registry://" in b.split("```")[0]]
    runtime, service = yaml.safe_load_all(block.split("```")[0])
    validate(service)
    model = service["spec"]["predictor"]["model"]
    assert model["storageUri"].startswith("model-registry://")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["spec"]["supportedModelFormats"] == [model["modelFormat"]] \
        == [{"name": configs.MODEL_FORMAT, "version": "2"}]
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    assert "--model_base_path=/tmp/models" in container["args"][0]
