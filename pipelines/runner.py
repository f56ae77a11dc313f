"""Thin runners: the pipeline locally with kfp.local, or on a Kubeflow cluster."""
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from components import configs
from components.errors import TlpError
from pipelines.pipeline import create_pipeline


@dataclass
class LocalRun:
    run_dir: Path
    evaluation: dict
    report: Path
    exported_model: Path | None  # None when the accuracy gate held the export back.


def _single(run_dir: Path, pattern: str) -> Path | None:
    matches = sorted(run_dir.glob(pattern))
    return matches[0] if matches else None


def run_local(arguments: dict, pipeline_root: str | Path) -> LocalRun:
    """Runs every step as a local subprocess; artifacts land in a new folder under
    pipeline_root (kfp.local needs a local, absolute path there)."""
    from kfp import local

    # Locally the steps run in this environment, not in the images they name.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses "
                            "custom or non-Python base image", category=RuntimeWarning)

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    earlier = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    try:
        create_pipeline(gpu_count=0)(**arguments)
    except RuntimeError as error:  # kfp.local's report of a failed task.
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
        raise TlpError(f"{message} Its log, with the cause, is above.") from error
    run_dir = max((p for p in set(root.iterdir()) - earlier
                   if p.name.startswith(configs.PIPELINE_NAME)), key=os.path.getmtime)
    evaluation = _single(run_dir, "**/evaluate/evaluation")
    return LocalRun(run_dir, json.loads(evaluation.read_text()),
                    _single(run_dir, "**/evaluate/report"),
                    _single(run_dir, "**/export/exported_model"))


def submit(arguments: dict, host: str, experiment: str, run_name: str | None,
           namespace: str | None, pipeline_root: str | None, gpu_count: int,
           gpu_resource: str, wait: bool, timeout_s: int) -> tuple[str, str | None]:
    """Creates a run on a KFP endpoint; returns its URL and, with wait, its final state.
    The token comes from KFP_TOKEN, else kfp.Client's in-cluster credentials."""
    import kfp

    client = kfp.Client(host=host, namespace=namespace,
                        existing_token=os.environ.get("KFP_TOKEN"))
    run = client.create_run_from_pipeline_func(
        create_pipeline(gpu_count, gpu_resource), arguments=arguments,
        run_name=run_name or f"{configs.PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
        experiment_name=experiment, namespace=namespace, pipeline_root=pipeline_root)
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    if not wait:
        return url, None
    return url, client.wait_for_run_completion(run.run_id, timeout=timeout_s).state
