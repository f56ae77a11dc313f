"""The register step: records a published model version in the Kubeflow Model Registry, where
KServe finds it by `model-registry://NAME/VERSION`, through the project's official client (PyPI
`model-registry`, imported only here and only when registering).

A version is a registered model (NAME), a model version named like the published version
(<export_destination>/<N> -> N), and a model artifact: the URI of that published folder,
format tensorflow, and the pipeline run that made it as its source. The version's metadata
holds the test metrics, the backbone, the classes and the model card."""
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from components import configs, storage
from components.errors import TlpError


@dataclass(frozen=True)
class Source:
    """The pipeline run that made the version, as the registry records a model's source."""
    run_id: str
    run_name: str
    namespace: str


def validate(server: str, name: str, export_destination: str) -> None:
    """Registration needs a registry URL, a model name and a published version in a bucket
    (the URI KServe downloads from); server empty: registration is off."""
    if not server:
        return
    if not re.fullmatch(r"https?://[^/\s]+/?", server):
        raise TlpError(f"model_registry={server!r}: write the server's URL, e.g. "
                       "http://model-registry-service.kubeflow:8080.")
    if not name:
        raise TlpError("registered_model_name is empty: name the model to register.")
    if not storage.is_remote(export_destination):
        raise TlpError(f"model_registry is set, so export_destination={export_destination!r} "
                       "must be a bucket (gs://... or s3://...) that the model server can read "
                       "the registered version from.")


def version_name(published: str) -> str:
    """The published version's number, <destination>/<N> -> N: the registry's version name."""
    if not storage.is_remote(published):
        raise TlpError(f"cannot register {published!r}: only a version published to a bucket "
                       "(export_destination gs://... or s3://...) can be served from the "
                       "registry.")
    number = published.rstrip("/").rsplit("/", 1)[-1]
    if not number.isdigit():
        raise TlpError(f"{published!r} is not a published version (<destination>/<N>).")
    return number


def version_metadata(card: dict) -> dict[str, str | float]:
    """The version's custom properties: the registry keeps scalars only, so numbers for the
    scalar test metrics (test_accuracy, ...) and JSON text for the classes and the card."""
    metrics = {f"test_{key}": float(value) for key, value in card["test_metrics"].items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {**metrics, "backbone": card["model"]["backbone"],
            "classes": json.dumps(card["data"]["class_names"]),
            "tensorflow_version": card["versions"]["tensorflow"],
            "model_card": json.dumps(card)}


def current_namespace() -> str:
    """The namespace this pod runs in: $POD_NAMESPACE, else the one its service account's
    files name; "" outside Kubernetes."""
    path = Path(configs.SERVICE_ACCOUNT_DIR) / "namespace"
    return os.environ.get("POD_NAMESPACE") or (path.read_text().strip() if path.is_file()
                                               else "")


def _server_message(error: Exception) -> str:
    """The registry's own message ({"code": ..., "message": ...}) of a failed call."""
    body = getattr(error, "body", None) or ""
    try:
        message = json.loads(body).get("message") or body
    except (ValueError, AttributeError):
        message = body
    return f"{getattr(error, 'status', '')} {getattr(error, 'reason', '')}: " \
           f"{str(message).strip()[:500]}"


def connect(server: str):
    """A client for the registry at server. Credentials are never parameters: the token in
    $MODEL_REGISTRY_TOKEN, else the file $KF_PIPELINES_SA_TOKEN_PATH names, else the pod's
    service-account token (the client reads both), else none (a plain-HTTP port-forward)."""
    from model_registry import ModelRegistry

    return ModelRegistry(server, author=configs.PIPELINE_NAME,
                         user_token=os.environ.get(configs.MODEL_REGISTRY_TOKEN_ENV) or None)


def _existing(client, name: str, version: str, uri: str) -> dict | None:
    """The ids of version `version` of `name` if it is registered with this URI (a retried or
    cached step registers nothing twice); None if not registered; an error if it points
    elsewhere or lacks its artifact (a half-done registration: delete it first)."""
    model = client.get_registered_model(name)
    found = model and client.get_model_version(name, version)
    if not found:
        return None
    artifact = client.get_model_artifact(name, version)
    if artifact is None or artifact.uri != uri:
        raise TlpError(f"version {version} of registered model {name!r} already exists with "
                       f"model artifact {artifact.uri if artifact else 'none'}, not {uri}: "
                       "delete it in the registry, or register under another name.")
    return {"registered_model_id": model.id, "model_version_id": found.id,
            "model_artifact_id": artifact.id}


def register(server: str, name: str, published: str, card: dict, source: Source) -> dict:
    """Registers the published version; returns the name, version, URI, the three ids and
    whether it was created now (False: it was already there)."""
    from aiohttp import ClientError
    from model_registry.exceptions import StoreError
    from mr_openapi.exceptions import ApiException

    version = version_name(published)
    result = {"name": name, "version": version, "uri": published,
              "model_registry_uri": f"model-registry://{name}/{version}"}
    try:
        client = connect(server)
        existing = _existing(client, name, version, published)
        if existing:
            return {**result, **existing, "created": False}
        client.register_model(
            name, published, version=version, model_format_name=configs.MODEL_FORMAT,
            # The major version, as KServe's runtimes match modelFormat (tensorflow 2).
            model_format_version=card["versions"]["tensorflow"].split(".")[0],
            version_description=f"{card['model']['backbone']} classifier of "
                                f"{len(card['data']['class_names'])} classes",
            model_source_kind="kfp", model_source_class="pipelinerun",
            model_source_group=source.namespace, model_source_id=source.run_id,
            model_source_name=source.run_name, metadata=version_metadata(card))
        return {**result, **_existing(client, name, version, published), "created": True}
    except ApiException as error:
        raise TlpError(f"the model registry at {server} answered "
                       f"{_server_message(error)}") from error
    except (ClientError, OSError) as error:
        raise TlpError(f"cannot reach the model registry at {server} ({error}).") from error
    except StoreError as error:
        raise TlpError(f"model registry at {server}: {error}") from error
