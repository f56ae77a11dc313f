"""`tlp run --local --docker`: kfp.local's DockerRunner, set up to run every step in the CPU
image as it runs on a cluster, on this machine's files.

kfp.local mounts only the pipeline root (at the same path); the data and the other local files
the parameters name are mounted here, also at the same path. Steps run as the calling user, so
the files they write belong to that user.
"""
import hashlib
import importlib.metadata
import os
import threading
import time
import uuid
from pathlib import Path

from components import configs
from components.errors import TlpError

_MAKE_IMAGES = "build it from this checkout with `make images` (README: Run in Docker locally)"


def source_digest() -> str:
    """Identifies the tlp code and pinned dependencies installed here; the same function run
    in the image tells whether the image holds this checkout's version."""
    import components
    import pipelines
    from components import hub_backbones  # Imports Keras: here, not when tlp starts.

    digest = hashlib.sha256("\n".join(sorted(importlib.metadata.requires("tlp") or ())).encode())
    # Installed without its dependencies, so not among tlp's requirements (pyproject.toml).
    digest.update(f"\n{hub_backbones.DISTRIBUTION}=={hub_backbones.installed_version()}".encode())
    for package in (components, pipelines):
        folder = Path(package.__file__).parent
        for path in sorted(folder.rglob("*.py")):
            digest.update(f"{path.relative_to(folder.parent)}\n".encode() + path.read_bytes())
    return digest.hexdigest()


def _local_paths(arguments: dict, names: tuple[str, ...]) -> dict[str, str]:
    """The parameters among names that hold a local path, made absolute: the steps' working
    folder in the container is not this one."""
    return {name: os.path.abspath(value) for name in names
            if (value := arguments.get(name)) and "://" not in value
            and value not in ("imagenet", "none")}


def _check_image(client, image: str) -> None:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise TlpError(f"the Docker image {image} does not exist: {_MAKE_IMAGES}.") from None
    command = ["python3", "-c", "from pipelines.local_docker import source_digest; "
               "print(source_digest())"]
    try:
        found = client.containers.run(image, command, remove=True, network_mode="none",
                                      environment={"HOME": "/tmp"}).decode().strip()
    except docker.errors.ContainerError:  # An image older than this check.
        found = None
    if found != source_digest():
        raise TlpError(f"the Docker image {image} holds another version of tlp than this "
                       f"checkout: rebuild it with `make images`.")


class StepWatch:
    """Every step container's exit code, from the engine's event stream: kfp.local's
    DockerRunner removes a container when it exits and, when it is gone before DockerRunner
    asks for its exit code, takes the step as successful (docs/engineering-notes.md). Use it
    around the run, with DockerRunner(labels=watch.labels): on leaving, it raises TlpError
    naming the first step whose container exited non-zero."""

    SETTLE_SECONDS = 30  # For the last exits to arrive; the containers have exited by then.

    def __init__(self) -> None:
        self.labels = {"tlp.run": uuid.uuid4().hex}
        self.steps: dict[str, str] = {}  # Container id: step name, from "create" events.
        self.exit_codes: dict[str, int] = {}  # Container id: exit code, from "die" events.

    def __enter__(self) -> "StepWatch":
        import docker

        self._client = docker.from_env()
        self._events = self._client.events(decode=True, filters={
            "type": "container", "event": ["create", "die"],
            "label": [f"{k}={v}" for k, v in self.labels.items()]})
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()
        return self

    def _record(self) -> None:
        import docker

        try:
            for event in self._events:
                container, attributes = event["Actor"]["ID"], event["Actor"]["Attributes"]
                if event["Action"] == "create":
                    self.steps[container] = self._step_name(container, attributes["name"])
                else:
                    self.exit_codes[container] = int(attributes["exitCode"])
        except (docker.errors.APIError, OSError, ValueError):  # The stream closed.
            pass

    def _step_name(self, container: str, fallback: str) -> str:
        """The component function a step container runs (kfp's executor argument)."""
        import docker

        try:
            args = self._client.api.inspect_container(container)["Args"]
        except docker.errors.NotFound:  # Already gone: the container's name must do.
            return fallback
        flag = "--function_to_execute"
        return args[args.index(flag) + 1] if flag in args[:-1] else fallback

    def __exit__(self, error_type, error, traceback) -> None:
        deadline = time.monotonic() + self.SETTLE_SECONDS
        while self.steps.keys() - self.exit_codes.keys() and time.monotonic() < deadline:
            time.sleep(0.1)
        self._events.close()
        self._client.close()
        self._thread.join(5)
        unsettled = [self.steps[c] for c in self.steps.keys() - self.exit_codes.keys()]
        failed = [(self.steps.get(c, c), code) for c, code in self.exit_codes.items() if code]
        if failed:
            step, code = failed[0]
            raise TlpError(f"step {step} failed: its container exited with code "
                           f"{code}.") from error
        if unsettled and error is None:
            raise TlpError(f"the Docker engine reported no exit code for step(s) "
                           f"{', '.join(unsettled)} within {self.SETTLE_SECONDS} s, so their "
                           "success is unknown: run again.")


def docker_runner(arguments: dict, image: str):
    """Returns the runner, the arguments with local paths made absolute and the StepWatch to
    run it in. Fails with the fix when no Docker engine answers or the image is missing or
    stale."""
    import docker
    from kfp import local

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        raise TlpError(f"no Docker engine answers at {where} ({error}). Start Docker (or set "
                       "DOCKER_HOST), or run without --docker.") from error
    try:
        _check_image(client, image)
    finally:
        client.close()
    inputs = _local_paths(arguments, configs.DOCKER_INPUT_PATHS)
    outputs = _local_paths(arguments, configs.DOCKER_OUTPUT_PATHS)
    for folder in outputs.values():
        Path(folder).mkdir(parents=True, exist_ok=True)  # A bind mount needs its source.
    read_only = {path: True for path in inputs.values()} | {p: False for p in outputs.values()}
    from components import hub_backbones  # Imports Keras: here, not when tlp starts.

    preset = hub_backbones.preset_folder(arguments.get("backbone", ""))
    if preset:  # backbone=hub:FOLDER: the preset folder, read-only, at its absolute path.
        read_only[preset] = True
        inputs["backbone"] = hub_backbones.PREFIX + preset
    mounts = [docker.types.Mount(path, path, type="bind", read_only=ro)
              for path, ro in read_only.items()]
    watch = StepWatch()
    runner = local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}", mounts=mounts,
                                network_mode=configs.DOCKER_NETWORK, labels=watch.labels,
                                environment={"HOME": "/tmp"})  # The user may have no home.
    return runner, {**arguments, **inputs, **outputs}, watch
