"""train and fine_tune over several nodes: the KFP step creates a Kubeflow Trainer TrainJob on
the jax-distributed runtime, whose nodes run components/node_training.py with the step's
parameters, waits for it, fails with its reason, and collects the model and history.

The nodes cannot see the step's files: they read the inputs at their artifact URIs (the
pipeline root's bucket), keep the resumable state where the step itself would
(training.state_location), and the chief writes the outputs under OUTPUTS_SUFFIX beside the
model's URI, from which the step copies them to its own output paths for the KFP launcher.

Talks to the Kubernetes API with the `kubernetes` client (a dependency of kfp): the unified
`kubeflow` SDK's TrainerClient (0.5.0) installs beside kfp 2.17 too, but its train() reads
the cluster-scoped ClusterTrainingRuntime before creating a job and its job status lists
pods, which the namespaced Role in k8s/base/trainjob-rbac.yaml does not grant.
"""
import hashlib
import json
import os
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from components import configs, storage
from components.errors import TlpError

OUTPUTS_SUFFIX = ".nodes"
NODE_COMMAND = ("python3", "-m", "components.node_training")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MAX_NAME_LENGTH = 40  # Pod names add -node-0-0-xxxxx and must stay within 63.
# What the code does with TrainJobs: k8s/base/trainjob-rbac.yaml must grant each.
VERBS = ("create", "get", "delete")


@dataclass(frozen=True)
class NodeSettings:
    """How each node of the TrainJob runs, fixed when the pipeline is compiled
    (pipeline.ClusterOptions.node_settings): image; GPUs (gpu_count of gpu_resource), CPU
    and memory requests; node_selector labels; tolerations and env as Kubernetes objects;
    image_pull_secrets. launcher: the step itself has no GPU and only launches TrainJobs."""
    image: str
    gpu_count: int = 0
    gpu_resource: str = configs.GPU_RESOURCE
    cpu: str = configs.STEP_RESOURCES["train"][0]
    memory: str = configs.STEP_RESOURCES["train"][1]
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    env: list[dict] = field(default_factory=list)
    image_pull_secrets: list[str] = field(default_factory=list)
    launcher: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_environment(cls) -> "NodeSettings":
        text = os.environ.get(configs.TRAINJOB_SETTINGS_ENV)
        if not text:
            raise TlpError(f"train_nodes > 1 runs a TrainJob on a Kubeflow cluster, and this "
                           f"step has no {configs.TRAINJOB_SETTINGS_ENV}: it was not compiled "
                           "for a cluster (kfp.local runs train on one process: set "
                           "train_nodes=1, or use tlp compile/submit).")
        return cls(**json.loads(text))


def job_name(run_id: str, task: str) -> str:
    """tlp-<task>-<run>: a DNS label unique per KFP run and task, the same for a retry of the
    task (which then finds the TrainJob of the attempt before)."""
    task = re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-")[:16].strip("-")
    run = re.sub(r"[^a-z0-9]", "", run_id.lower())[:12] or hashlib.sha256(
        run_id.encode()).hexdigest()[:12]
    return f"tlp-{task}-{run}"[:MAX_NAME_LENGTH].rstrip("-")


def node_spec(step: str, parameters: dict, inputs: dict[str, str], outputs: dict[str, str],
              state: str) -> dict:
    """What node_training runs: the step, its parameters, the URIs of its inputs and outputs
    and of its resumable state."""
    return {"step": step, "parameters": parameters, "inputs": inputs, "outputs": outputs,
            "state": state}


def manifest(name: str, nodes: int, settings: NodeSettings, spec: dict,
             service_account: str = "") -> dict:
    """The TrainJob: `nodes` pods of settings.image on the jax-distributed runtime running
    node_training with `spec`, with the GPU steps' resources, node selector and tolerations
    (those through a runtime patch, Trainer v2.2's way to set the pods' scheduling)."""
    resources = {"requests": {"cpu": settings.cpu, "memory": settings.memory}}
    if settings.gpu_count:
        gpus = str(settings.gpu_count)
        resources["requests"][settings.gpu_resource] = gpus
        resources["limits"] = {settings.gpu_resource: gpus}
    trainer = {"image": settings.image, "command": list(NODE_COMMAND),
               "args": [json.dumps(spec, sort_keys=True)], "numNodes": nodes,
               "resourcesPerNode": resources}
    if settings.env:
        trainer["env"] = settings.env
    pod = {key: value for key, value in (
        ("nodeSelector", settings.node_selector), ("tolerations", settings.tolerations),
        ("imagePullSecrets", [{"name": secret} for secret in settings.image_pull_secrets]),
        ("serviceAccountName", service_account)) if value}
    job_spec = {"runtimeRef": {"name": configs.TRAINJOB_RUNTIME}, "trainer": trainer}
    if pod:
        job_spec["runtimePatches"] = [{
            "manager": configs.TRAINJOB_PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                "name": configs.TRAINJOB_CONTAINER,
                "template": {"spec": {"template": {"spec": pod}}}}]}}}}]
    return {"apiVersion": f"{configs.TRAINJOB_GROUP}/{configs.TRAINJOB_VERSION}",
            "kind": configs.TRAINJOB_KIND,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tlp"}},
            "spec": job_spec}


def logs_command(namespace: str, name: str) -> str:
    return (f"kubectl -n {namespace} logs -f --prefix --all-containers "
            f"-l {configs.TRAINJOB_POD_LABEL}={name}")


def _conditions(job: dict) -> dict[str, dict]:
    """The TrainJob's conditions that hold, by type (Created, Suspended, Complete, Failed)."""
    return {c["type"]: c for c in job.get("status", {}).get("conditions", [])
            if c.get("status") == "True"}


def _api_error(error, action: str, namespace: str) -> TlpError:
    what = f"{configs.TRAINJOB_GROUP}/{configs.TRAINJOB_VERSION} TrainJobs"
    if error.status == 403:
        return TlpError(f"not allowed to {action} {what} in namespace {namespace}: give the "
                        "pipeline's service account the Role in k8s/base/trainjob-rbac.yaml "
                        f"(README: several nodes). {error.reason}")
    if error.status == 404:
        return TlpError(f"cannot {action} {what} in namespace {namespace}: is Kubeflow "
                        f"Trainer v2.2 or newer installed, with its {configs.TRAINJOB_RUNTIME} "
                        f"runtime? ({error.status} {error.reason})")
    return TlpError(f"could not {action} {what} in namespace {namespace}: {error.status} "
                    f"{error.reason}: {error.body}")


class TrainJobs:
    """The TrainJob endpoints of one namespace, through kubernetes.client.CustomObjectsApi."""

    def __init__(self, namespace: str, api_client=None):
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()  # The step's pod, as its service account.
            api_client = client.ApiClient()
        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.args = (configs.TRAINJOB_GROUP, configs.TRAINJOB_VERSION, namespace,
                     configs.TRAINJOB_PLURAL)

    def _call(self, action: str, method: Callable, *args):
        from kubernetes.client.exceptions import ApiException

        try:
            return method(*self.args, *args)
        except ApiException as error:
            raise _api_error(error, action, self.namespace) from error

    def create(self, body: dict) -> dict:
        return self._call("create", self.api.create_namespaced_custom_object, body)

    def get(self, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(*self.args, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise _api_error(error, "get", self.namespace) from error

    def delete(self, name: str) -> None:
        self._call("delete", self.api.delete_namespaced_custom_object, name)


def start(jobs: TrainJobs, body: dict, poll_seconds: float,
          log: Callable[[str], None] = print) -> None:
    """Creates the TrainJob. One of that name left by an earlier attempt of the step (a KFP
    retry) is deleted first if it failed (the new one's nodes resume from the state), and
    otherwise kept, waited for and collected (the step's own pod was what failed)."""
    name = body["metadata"]["name"]
    existing = jobs.get(name)
    if existing is not None:
        if "Failed" not in _conditions(existing):
            log(f"trainjob: {name} from an earlier attempt of this step is there, not failed: "
                "following it")
            return
        log(f"trainjob: deleting {name}, which failed in an earlier attempt of this step")
        jobs.delete(name)
        while jobs.get(name) is not None:
            time.sleep(poll_seconds)
    jobs.create(body)
    log(f"trainjob: created {jobs.namespace}/{name}: {body['spec']['trainer']['numNodes']} "
        f"node(s) of {body['spec']['trainer']['image']} on the {configs.TRAINJOB_RUNTIME} "
        "runtime")


def wait(jobs: TrainJobs, name: str, poll_seconds: float,
         log: Callable[[str], None] = print) -> None:
    """Until the TrainJob completes; prints each change of its conditions and its jobs'
    counts; fails with its reason and message if it fails or disappears."""
    logs = logs_command(jobs.namespace, name)
    log(f"trainjob: {name}: its nodes' logs: {logs}")
    seen = None
    while True:
        job = jobs.get(name)
        if job is None:
            raise TlpError(f"TrainJob {jobs.namespace}/{name} was deleted while it ran.")
        conditions = _conditions(job)
        jobs_status = job.get("status", {}).get("jobsStatus", [])
        now = (sorted(conditions), json.dumps(jobs_status, sort_keys=True))
        if now != seen:
            counts = "; ".join(f"{status['name']}: " + ", ".join(
                f"{key} {value}" for key, value in sorted(status.items()) if key != "name")
                for status in jobs_status)
            log(f"trainjob: {name}: {', '.join(sorted(conditions)) or 'pending'}"
                + (f" ({counts})" if counts else ""))
            seen = now
        if "Failed" in conditions:
            failed = conditions["Failed"]
            raise TlpError(f"TrainJob {jobs.namespace}/{name} failed: "
                           f"{failed.get('reason', 'no reason')}: "
                           f"{failed.get('message', '')} (its nodes' logs: {logs})")
        if "Complete" in conditions:
            return
        time.sleep(poll_seconds)


def outputs_location(model_uri: str) -> str:
    """Where the chief node writes the outputs: beside the step's model artifact."""
    return storage.from_artifact_uri(model_uri) + OUTPUTS_SUFFIX


def namespace() -> str:
    """The step's own namespace: set by the compiled pipeline, else its service account's."""
    value = os.environ.get(configs.NAMESPACE_ENV)
    if value:
        return value
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise TlpError(f"no namespace for the TrainJob: {configs.NAMESPACE_ENV} is unset and "
                   "this is not a Kubernetes pod.")


def run_step(step: str, parameters: dict, artifacts: dict, inputs: tuple[str, ...],
             outputs: tuple[str, ...], folder_outputs: tuple[str, ...], state: str,
             nodes: int, run_id: str, task: str, jobs: TrainJobs | None = None,
             settings: NodeSettings | None = None,
             poll_seconds: float = configs.TRAINJOB_POLL_SECONDS) -> None:
    """The KFP step `step` on `nodes` nodes: artifacts are its KFP artifacts by name (with
    .uri and .path); inputs and outputs name them; folder_outputs are folders. Returns once
    the outputs are at their artifacts' local paths."""
    settings = settings or NodeSettings.from_environment()
    jobs = jobs or TrainJobs(namespace())
    remote = outputs_location(artifacts["model"].uri)
    handoff = {name: storage.join(remote, posixpath.basename(artifacts[name].path))
               for name in outputs}
    spec = node_spec(step, parameters,
                     {name: storage.from_artifact_uri(artifacts[name].uri) for name in inputs},
                     handoff, state)
    name = job_name(run_id, task)
    start(jobs, manifest(name, nodes, settings, spec,
                         os.environ.get(configs.SERVICE_ACCOUNT_ENV, "")), poll_seconds)
    wait(jobs, name, poll_seconds)
    for output, uri in handoff.items():
        if output in folder_outputs:
            storage.download_dir(uri, artifacts[output].path)
        else:
            storage.download_file(uri, artifacts[output].path)
    storage.delete_tree(remote)
    print(f"trainjob: {name} complete; collected {', '.join(outputs)}", flush=True)
