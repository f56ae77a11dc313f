"""`tlp run --local --docker`: the whole pipeline in the CPU image with kfp.local's DockerRunner,
compared with the subprocess run (`local_run`). The tests marked docker need a Docker engine
and the image (`make image-cpu`); the default suite leaves them out and CI runs them in a session
of their own with the other tests that use local_run (.ci/run)."""
import importlib.metadata
import io
import importlib.util
import json
import os
import re
import shutil
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from components import configs, predict
from components.errors import TlpError
from conftest import e2e_arguments
from test_progress import EPOCH_LINE, STEP_LINE, STEPS
from pipelines import local_docker, runner

ROOT = Path(__file__).resolve().parents[1]


def requirements_script():
    """docker/requirements.py as a module (a `docker` package name would shadow docker-py)."""
    spec = importlib.util.spec_from_file_location("tlp_docker_requirements",
                                                  ROOT / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(lines: list[str]) -> dict[str, str]:
    """{requirement without version: version} of the == pins, markers dropped."""
    return dict(line.split(";")[0].strip().split("==") for line in lines)


def test_the_cpu_image_installs_cpu_only_tensorflow_and_jax():
    script = requirements_script()
    cpu = script.requirements(PYPROJECT)
    assert cpu == PYPROJECT["project"]["dependencies"]
    versions = pins(cpu)
    assert versions["tensorflow-cpu"] == "2.21.0"
    assert versions["jax"] == versions["jaxlib"] == "0.10.2"
    assert not [line for line in cpu if "cuda" in line]


def test_the_gpu_image_installs_the_cuda_build_of_the_pinned_jax():
    """Base TensorFlow kept, jax replaced by jax[cudaNN] of the same version, NN the CUDA
    major version of TensorFlow's own CUDA wheels (its and-cuda extra)."""
    script = requirements_script()
    gpu = script.requirements(PYPROJECT, tensorflow_from_base=True, extras=("gpu",))
    cpu = pins(script.requirements(PYPROJECT))
    versions = pins(gpu)
    assert not [line for line in gpu if line.startswith("tensorflow==")
                or line.startswith("tensorflow-cpu")]
    assert "jax" not in versions
    [jax_cuda] = [name for name in versions if name.startswith("jax[")]
    assert versions[jax_cuda] == cpu["jax"] == versions["jaxlib"]  # One version of JAX.
    tensorflow_cuda = {re.search(r"-cu(\d+)", line)[1] for line in
                       importlib.metadata.requires("tensorflow-cpu") if "and-cuda" in line}
    assert jax_cuda == f"jax[cuda{tensorflow_cuda.pop()}]" and not tensorflow_cuda
    # Everything else as in the CPU image.
    assert {k: v for k, v in versions.items() if k != jax_cuda} \
        == {k: v for k, v in cpu.items() if k not in ("tensorflow", "tensorflow-cpu", "jax")}


def test_the_image_check_names_what_is_missing(capsys):
    script = requirements_script()
    assert script.main(["--check", str(ROOT / "pyproject.toml")]) == 0  # This venv: CPU.
    assert script.main(["--check", "--tensorflow-from-base", "true", "--extras", "gpu",
                        str(ROOT / "pyproject.toml")]) == 1
    assert capsys.readouterr().err \
        == "requirements: jax-cuda12-plugin==0.10.2 wanted, not installed\n"
    with pytest.raises(SystemExit, match="unknown extra.*tpu"):
        script.requirements(PYPROJECT, extras=("tpu",))


def test_make_builds_the_gpu_image_with_the_gpu_extra():
    makefile = (ROOT / "Makefile").read_text()
    gpu = makefile[makefile.index("\nimage-gpu:"):]
    assert "--build-arg TENSORFLOW_FROM_BASE=true" in gpu and "--build-arg EXTRAS=gpu" in gpu
    cpu = makefile[makefile.index("\nimage-cpu:"):makefile.index("\nimage-gpu:")]
    assert "EXTRAS" not in cpu
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG EXTRAS=\n" in dockerfile  # Empty by default: the CPU image.
    assert "!docker/requirements.py" in (ROOT / "docker/Dockerfile.dockerignore").read_text()


def test_a_clear_error_when_no_docker_engine_answers(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(TlpError, match="no Docker engine answers at unix://.*no-engine.sock"):
        local_docker.docker_runner({"data_dir": str(tmp_path)}, configs.CPU_IMAGE)


@pytest.mark.docker
def test_a_clear_error_when_the_image_is_missing(tmp_path):
    with pytest.raises(TlpError, match="tlp-test/missing:0 does not exist: .*make images"):
        local_docker.docker_runner({"data_dir": str(tmp_path)}, "tlp-test/missing:0")


@pytest.mark.docker
def test_the_watch_catches_a_failed_step_whose_container_is_gone():
    """The case kfp.local's DockerRunner takes as a success: the container exited non-zero and
    was removed (auto_remove) before its exit code was asked for."""
    import docker

    client = docker.from_env()
    with pytest.raises(TlpError, match="step broken_step failed: its container exited with "
                                       "code 3"):
        with local_docker.StepWatch() as watch:
            container = client.containers.run(
                configs.CPU_IMAGE, ["sh", "-c", "sleep 1; exit 3", "sh",
                                    "--function_to_execute", "broken_step"],
                detach=True, auto_remove=True, network_mode="none", labels=watch.labels)
            while client.containers.list(all=True, filters={"id": container.id}):
                time.sleep(0.1)
            with pytest.raises(docker.errors.NotFound):
                container.wait()
    client.close()


@pytest.mark.docker
def test_a_failed_step_fails_the_docker_run_and_is_named(e2e_images, tmp_path):
    data = shutil.copytree(e2e_images, tmp_path / "images")
    arguments = e2e_arguments(data)  # Checks the data here, before any step runs.
    for image in (data / "blue").iterdir():  # So preprocess fails in its container.
        image.unlink()
    with pytest.raises(TlpError, match="step preprocess failed: its container exited with "
                                       "code 1"):
        runner.run_local(arguments, tmp_path / "root", configs.CPU_IMAGE)


def step_files(run_dir: Path, step: str) -> set[str]:
    """A step's files, relative; TensorBoard event files are named by time and host."""
    return {re.sub(r"(events\.out\.tfevents)\..*", r"\1", str(p.relative_to(run_dir / step)))
            for p in (run_dir / step).rglob("*") if p.is_file()}


def examples(shard: Path) -> list[tf.train.Example]:
    return [tf.train.Example.FromString(record)
            for record in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator()]


@pytest.mark.docker
def test_docker_run_produces_the_artifacts_of_the_subprocess_run(local_run, e2e_images,
                                                                 tmp_path_factory):
    console = io.StringIO()
    docker = runner.run_local(e2e_arguments(e2e_images), tmp_path_factory.mktemp("docker"),
                              configs.CPU_IMAGE, console=console)
    subprocess, run = local_run.run_dir, docker.run_dir
    # The same progress as without Docker: a line as each step starts and ends, one per
    # epoch, and each step's whole log (its epoch markers included) in logs/.
    shown = console.getvalue().splitlines()
    assert [line.split()[0] for line in shown if STEP_LINE.match(line)] == [
        step for step in STEPS for _ in range(2)]
    assert sum(bool(EPOCH_LINE.match(line)) for line in shown) == 2, shown
    for step in ("train", "fine-tune"):
        assert configs.EPOCH_MARKER in (run / "logs" / f"{step}.log").read_text()
    for step in STEPS:
        assert step_files(run, step) == step_files(subprocess, step), step
    # Preprocess is deterministic: the same examples (protobuf does not fix the byte order
    # of their feature maps), metadata and manifest.
    dataset = Path("preprocess/dataset")
    for shard in (subprocess / dataset).glob("*.tfrecord"):
        assert examples(run / dataset / shard.name) == examples(shard)
    assert json.loads((run / dataset / "metadata.json").read_text()) == json.loads(
        (subprocess / dataset / "metadata.json").read_text())
    manifest = Path("preprocess/manifest")
    assert pq.read_table(run / manifest).equals(pq.read_table(subprocess / manifest))
    assert docker.evaluation.keys() == local_run.evaluation.keys()
    assert docker.evaluation["gate"]["approved"] is True
    # The exported model serves: a red training image gets three class probabilities.
    [(_, top)] = predict.predict_files(docker.exported_model, [e2e_images / "red/red-000.png"])
    assert {name for name, _ in top} == {"blue", "green", "red"}
    assert sum(p for _, p in top) == pytest.approx(1, abs=1e-4)
    # The steps ran as this user: it owns what they wrote.
    assert {p.stat().st_uid for p in run.rglob("*")} == {os.getuid()}
