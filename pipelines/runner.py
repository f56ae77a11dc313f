"""Thin runners: the pipeline locally with kfp.local, or on a Kubeflow cluster."""
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from components import configs
from components.errors import TlpError
from pipelines import local_docker, progress
from pipelines.pipeline import ClusterOptions, TuneOptions, create_pipeline


@dataclass
class LocalRun:
    run_dir: Path
    evaluation: dict
    report: Path
    exported_model: Path | None  # None when the accuracy gate held the export back.
    tuning: dict | None = None  # The trials table, when the pipeline tuned.


def _single(run_dir: Path, pattern: str) -> Path | None:
    matches = sorted(run_dir.glob(pattern))
    return matches[0] if matches else None


def _with_logs(message: str, reporter: progress.Reporter) -> TlpError:
    """A failed run's error, pointing to the failed step's log (else to the logs folder)."""
    if reporter.failed_log:
        message += f" Its log, with the cause: {reporter.failed_log}"
    elif reporter.logs_dir:
        message += f" The steps' logs: {reporter.logs_dir}"
    return TlpError(message)


def _tuning_table(run_dir: Path) -> dict | None:
    """The whole trials table (tune_best's), if the run tuned."""
    table = _single(run_dir, "**/tune-best/tuning")
    return json.loads(table.read_text()) if table else None


def run_local(arguments: dict, pipeline_root: str | Path, docker_image: str | None = None,
              verbose: bool = False, console: TextIO | None = None,
              tuning: TuneOptions | None = None) -> LocalRun:
    """Runs every step as a local subprocess, or with docker_image in a container of that
    image; artifacts land in a new folder under pipeline_root (kfp.local needs a local,
    absolute path there), each step's output in its logs folder. console (stdout) gets a
    line per step and epoch, or with verbose everything, as kfp.local prints it. tuning:
    tune first (rounds of trials), then train with the best configuration."""
    from kfp import local

    # Without docker_image the steps run in this environment, not in the images they name.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses "
                            "custom or non-Python base image", category=RuntimeWarning)

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    earlier = set(root.iterdir())
    watch = contextlib.nullcontext()
    if docker_image:
        runner, arguments, watch = local_docker.docker_runner(arguments, docker_image)
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(root))
    reporter = progress.Reporter(console or sys.stdout, verbose)
    try:
        with progress.report_steps(reporter), watch:
            create_pipeline(image=docker_image, tuning=tuning)(**arguments)
    except RuntimeError as error:  # kfp.local's report of a failed task.
        raise _with_logs(progress.strip_colours(str(error)), reporter) from error
    except TlpError as error:  # StepWatch's, with --docker.
        raise _with_logs(str(error), reporter) from error
    run_dir = max((p for p in set(root.iterdir()) - earlier
                   if p.name.startswith(configs.PIPELINE_NAME)), key=os.path.getmtime)
    evaluation = _single(run_dir, "**/evaluate/evaluation")
    return LocalRun(run_dir, json.loads(evaluation.read_text()),
                    _single(run_dir, "**/evaluate/report"),
                    _single(run_dir, "**/export/exported_model"), _tuning_table(run_dir))


def kfp_client(host: str, namespace: str | None):
    """A client for the KFP API at host. Auth: the token in $KFP_TOKEN, else (inside a
    cluster) the projected service-account token kfp reads, else none (a port-forward)."""
    import kfp
    from kfp import client as kfp_client_module
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token = os.environ.get("KFP_TOKEN")
    token_file = os.environ.get(kfp_client_module.KF_PIPELINES_SA_TOKEN_ENV,
                                kfp_client_module.KF_PIPELINES_SA_TOKEN_PATH)
    in_cluster = not token and Path(token_file).is_file()
    with warnings.catch_warnings():  # "only works with KFP v2.0.0-beta.2 and later": we know.
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token,
                          credentials=ServiceAccountTokenVolumeCredentials(token_file)
                          if in_cluster else None)


def submit(arguments: dict, host: str, cluster: ClusterOptions, experiment: str,
           run_name: str | None = None, namespace: str | None = None,
           pipeline_root: str | None = None, wait: bool = False,
           timeout_s: float = 24 * 3600,
           tuning: TuneOptions | None = None) -> tuple[str, str | None]:
    """Compiles the pipeline with the cluster options and creates a run on the KFP endpoint;
    returns the run's URL and, with wait, its final state (SUCCEEDED, FAILED, ...)."""
    import kfp_server_api
    import urllib3

    url = None
    try:
        client = kfp_client(host, namespace)
        run = client.create_run_from_pipeline_func(
            create_pipeline(cluster, tuning=tuning), arguments=arguments,
            run_name=run_name or f"{configs.PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment, namespace=namespace, pipeline_root=pipeline_root)
        url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
        print(f"run: {url}", flush=True)
        if not wait:
            return url, None
        final = client.wait_for_run_completion(run.run_id, timeout=timeout_s,
                                               sleep_duration=configs.SUBMIT_POLL_SECONDS)
    except kfp_server_api.ApiException as error:
        raise TlpError(f"the KFP API at {host} answered {error.status} {error.reason}: "
                       f"{(error.body or '').strip()[:500]}") from error
    except urllib3.exceptions.HTTPError as error:
        raise TlpError(f"cannot reach the KFP API at {host} ({error}); check --host "
                       "(e.g. a port-forward: kubectl port-forward svc/ml-pipeline-ui 8080:80 "
                       "-n kubeflow, then --host http://localhost:8080).") from error
    except TimeoutError as error:
        raise TlpError(f"the run did not finish within {timeout_s:.0f} s (--timeout); it goes "
                       f"on: {url}") from error
    return url, final.state
