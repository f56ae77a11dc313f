"""Vertex AI Pipelines as a target: what it requires of a run's arguments, and submission
through google-cloud-aiplatform's PipelineJob (the optional extra: pip install 'tlp[vertex]').

The pipeline itself compiles for Vertex with ClusterOptions(target="vertex"): Vertex
accelerator names and CPU/memory limits, and no kfp-kubernetes platform spec."""
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from components import configs
from components.errors import TlpError
from pipelines.pipeline import ClusterOptions, TuneOptions, create_pipeline

# PipelineState names, less their PIPELINE_STATE_ prefix, after which a run no longer changes.
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")


def check_arguments(arguments: dict, pipeline_root: str | None = None) -> None:
    """Vertex runs read and write Cloud Storage: the pipeline root (when submitting) and an
    export destination must be gs:// URIs."""
    for name, value in (("--pipeline-root", pipeline_root),
                        ("export_destination", arguments.get("export_destination"))):
        if value and not value.startswith("gs://"):
            raise TlpError(f"{name}={value}: Vertex AI Pipelines needs a gs://BUCKET/... URI.")


@dataclass(frozen=True)
class VertexProject:
    """Where and as whom runs are created: the Google Cloud project, its region, the service
    account the run's steps act as (None: the project's default Compute Engine account), and
    the API endpoint (None: the region's; a private or test endpoint otherwise)."""
    project: str
    region: str = configs.VERTEX_REGION
    service_account: str | None = None
    api_endpoint: str | None = None


def _state(job) -> str:
    return job.state.name.removeprefix("PIPELINE_STATE_")


def _wait(job, url: str, timeout_s: float) -> str:
    """Polls the job until it ends; its final state."""
    deadline = time.monotonic() + timeout_s
    while (state := _state(job)) not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise TlpError(f"the run did not finish within {timeout_s:.0f} s (--timeout); it "
                           f"goes on: {url}")
        time.sleep(configs.SUBMIT_POLL_SECONDS)
    return state


def submit(arguments: dict, cluster: ClusterOptions, target: VertexProject,
           pipeline_root: str | None, run_name: str | None = None, wait: bool = False,
           timeout_s: float = 24 * 3600,
           tuning: TuneOptions | None = None) -> tuple[str, str | None]:
    """Compiles the pipeline for Vertex (with tuning, if given) and creates a PipelineJob
    with these arguments; returns the run's console URL and, with wait, its final state
    (SUCCEEDED, FAILED, ...).
    Credentials: Application Default Credentials (gcloud auth application-default login,
    GOOGLE_APPLICATION_CREDENTIALS, or the workload's service account)."""
    if not pipeline_root:
        raise TlpError("--target vertex needs --pipeline-root gs://BUCKET/PATH: Vertex has no "
                       "default pipeline root of the project's.")
    check_arguments(arguments, pipeline_root)
    try:
        from google.api_core import exceptions
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import aiplatform
        from requests.exceptions import ConnectionError as Unreachable
    except ImportError as error:
        raise TlpError("--target vertex submits with google-cloud-aiplatform: "
                       "pip install 'tlp[vertex]'.") from error
    from kfp import compiler

    endpoint = target.api_endpoint or f"{target.region}-aiplatform.googleapis.com"
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "pipeline.yaml"
        compiler.Compiler().compile(create_pipeline(cluster, tuning=tuning),
                                    str(template))
        try:
            # REST, not gRPC: one transport for every endpoint, a test's plain-HTTP one too.
            aiplatform.init(project=target.project, location=target.region,
                            api_endpoint=endpoint, api_transport="rest")
            job = aiplatform.PipelineJob(
                display_name=run_name or configs.PIPELINE_NAME, template_path=str(template),
                pipeline_root=pipeline_root, parameter_values=arguments)
            job.submit(service_account=target.service_account)
            url = (f"https://console.cloud.google.com/vertex-ai/locations/{target.region}/"
                   f"pipelines/runs/{job.name}?project={target.project}")
            print(f"run: {url}", flush=True)
            return url, _wait(job, url, timeout_s) if wait else None
        except exceptions.GoogleAPICallError as error:
            raise TlpError(f"Vertex AI at {endpoint} answered {error.code}: "
                           f"{error.message}") from error
        except Unreachable as error:
            raise TlpError(f"cannot reach Vertex AI at {endpoint} ({error}); check --region "
                           "and --api-endpoint.") from error
        except DefaultCredentialsError as error:
            raise TlpError("no Google Cloud credentials: run `gcloud auth application-default "
                           "login`, or set GOOGLE_APPLICATION_CREDENTIALS.") from error
