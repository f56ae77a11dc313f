"""One place that reads and writes files: local paths, gs:// (google-cloud-storage) and s3://
(pyarrow.fs, any S3-compatible store: AWS, MinIO, SeaweedFS), so callers never branch on the
scheme.

Credentials and endpoints come from the environment, never from pipeline parameters:
- gs://: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth
  application-default login`, GKE Workload Identity); STORAGE_EMULATOR_HOST points it at an
  emulator.
- s3://: the AWS SDK's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web
  identity, instance role); AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for stores other than AWS.
- minio:// (KFP's name for the store Kubeflow installs, in artifact URIs only): the same bucket
  and key as s3:// at that endpoint (`from_artifact_uri`).

Transient errors (throttling, 5xx, dropped connections) are retried with exponential back-off
by the libraries themselves: google-api-core's retry for GCS, the AWS SDK's standard retry
strategy for S3. Large files go up in pieces that are retried on their own: GCS resumable
uploads (files over 8 MiB, google-cloud-storage's threshold) in GCS_CHUNK_SIZE chunks, and S3
multipart uploads (pyarrow's output streams always upload in parts).
"""
import contextlib
import functools
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from components.errors import MissingError, TlpError

SCHEMES = ("gs://", "s3://")
# A multiple of 256 KiB, as GCS requires; each chunk is one retried request.
GCS_CHUNK_SIZE = 32 * 2**20
S3_MAX_ATTEMPTS = 6
# Environment variables that configure S3 access: a change of any builds a new client.
S3_ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                  "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                  "AWS_DEFAULT_REGION")
TRANSFER_THREADS = 8


def is_remote(uri: str | Path) -> bool:
    return str(uri).startswith(SCHEMES)


def join(uri: str | Path, *parts: str) -> str:
    if not is_remote(uri):
        return os.path.join(uri, *parts)
    return "/".join([str(uri).rstrip("/"), *(part.strip("/") for part in parts)])


def _split(uri: str) -> tuple[str, str]:
    """gs://bucket/some/key -> ("bucket", "some/key")."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def _bucket_uri(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" + _split(uri)[0]


class _Local:
    def list(self, uri: str) -> list[str]:
        root = Path(uri)
        return [os.path.join(uri, p.relative_to(root)) for p in root.rglob("*") if p.is_file()]

    def read(self, uri: str) -> bytes:
        return Path(uri).read_bytes()

    def write(self, uri: str, data: bytes) -> None:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)

    def write_new(self, uri: str, data: bytes) -> bool:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(uri, "xb") as file:
                file.write(data)
            return True
        except FileExistsError:
            return False

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    def bucket_exists(self, uri: str) -> bool:
        return True

    def upload(self, local: str, uri: str) -> None:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, uri)

    download = upload

    def delete_tree(self, uri: str) -> None:
        shutil.rmtree(uri, ignore_errors=True)


class _Gcs:
    """google-cloud-storage. Uploads pass DEFAULT_RETRY explicitly: by default the library
    retries only writes made conditional on a generation, but writing the same bytes to the
    same name twice is harmless here."""

    def __init__(self):
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.client = storage.Client()  # ADC, or anonymous with STORAGE_EMULATOR_HOST.
        self.retry = DEFAULT_RETRY

    def blob(self, uri: str):
        bucket, key = _split(uri)
        return self.client.bucket(bucket).blob(key)

    def list(self, uri: str) -> list[str]:
        bucket, key = _split(uri)
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        return [f"gs://{bucket}/{blob.name}" for blob in self.client.list_blobs(
            bucket, prefix=prefix, retry=self.retry) if not blob.name.endswith("/")]

    def read(self, uri: str) -> bytes:
        return self.blob(uri).download_as_bytes(retry=self.retry)

    def write(self, uri: str, data: bytes) -> None:
        self.blob(uri).upload_from_string(data, retry=self.retry)

    def write_new(self, uri: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:  # Generation 0: only if no live object has that name.
            self.blob(uri).upload_from_string(data, if_generation_match=0, retry=self.retry)
            return True
        except PreconditionFailed:
            return False

    def exists(self, uri: str) -> bool:
        if self.blob(uri).exists(retry=self.retry):
            return True
        bucket, key = _split(uri)
        return bool(key.strip("/")) and any(self.client.list_blobs(
            bucket, prefix=key.rstrip("/") + "/", max_results=1, retry=self.retry))

    def bucket_exists(self, uri: str) -> bool:
        return self.client.bucket(_split(uri)[0]).exists(retry=self.retry)

    def upload(self, local: str, uri: str) -> None:
        blob = self.blob(uri)
        # Set for uploads only: with a chunk size, downloads become ranged requests, which
        # fail on empty objects.
        blob.chunk_size = GCS_CHUNK_SIZE
        blob.upload_from_filename(local, retry=self.retry)

    def download(self, uri: str, local: str) -> None:
        self.blob(uri).download_to_filename(local, retry=self.retry)

    def delete_tree(self, uri: str) -> None:
        from google.api_core.exceptions import NotFound

        for file in self.list(uri):
            with contextlib.suppress(NotFound):  # Gone already: a retried delete.
                self.blob(file).delete(retry=self.retry)


class _S3:
    """pyarrow's S3FileSystem (the AWS C++ SDK): retries by its standard strategy."""

    def __init__(self):
        import pyarrow.fs

        self.fs_module = pyarrow.fs
        # pyarrow ignores the AWS_ENDPOINT_URL* variables, so they are read here.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {}
        if endpoint:
            parsed = urlparse(endpoint)
            options = {"endpoint_override": parsed.netloc or parsed.path,
                       "scheme": parsed.scheme or "https"}
        self.fs = pyarrow.fs.S3FileSystem(
            retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
            **options)

    def list(self, uri: str) -> list[str]:
        selector = self.fs_module.FileSelector(uri[len("s3://"):].rstrip("/"), recursive=True,
                                               allow_not_found=True)
        files = ["s3://" + info.path for info in self.fs.get_file_info(selector)
                 if info.type == self.fs_module.FileType.File]
        if not files and not self.bucket_exists(uri):  # allow_not_found covers the bucket too.
            raise FileNotFoundError(uri)
        return files

    def read(self, uri: str) -> bytes:
        with self.fs.open_input_stream(uri[len("s3://"):]) as stream:
            return stream.read()

    def write(self, uri: str, data: bytes) -> None:
        with self.fs.open_output_stream(uri[len("s3://"):]) as stream:
            stream.write(data)

    def write_new(self, uri: str, data: bytes) -> bool:
        # pyarrow cannot send S3's conditional If-None-Match, so this checks, then writes.
        if self.exists(uri):
            return False
        self.write(uri, data)
        return True

    def exists(self, uri: str) -> bool:
        return self.fs.get_file_info(uri[len("s3://"):]).type != \
            self.fs_module.FileType.NotFound

    def bucket_exists(self, uri: str) -> bool:
        return self.exists(_bucket_uri(uri))

    def upload(self, local: str, uri: str) -> None:
        self.fs_module.copy_files(local, uri[len("s3://"):],
                                 source_filesystem=self.fs_module.LocalFileSystem(),
                                 destination_filesystem=self.fs)

    def download(self, uri: str, local: str) -> None:
        self.fs_module.copy_files(uri[len("s3://"):], str(Path(local).absolute()),
                                 source_filesystem=self.fs,
                                 destination_filesystem=self.fs_module.LocalFileSystem())

    def delete_tree(self, uri: str) -> None:
        path = uri[len("s3://"):].rstrip("/")
        if self.fs.get_file_info(path).type == self.fs_module.FileType.Directory:
            self.fs.delete_dir(path)


@functools.cache
def _gcs(emulator: str | None) -> _Gcs:
    return _Gcs()


@functools.cache
def _s3(environment: tuple) -> _S3:
    return _S3()


def _forget_clients() -> None:
    """A forked child (a preprocess worker) must open its own connections: sharing its
    parent's kept-alive sockets interleaves responses between processes."""
    _gcs.cache_clear()
    _s3.cache_clear()


os.register_at_fork(after_in_child=_forget_clients)


def _store(uri: str):
    """The backend for uri; clients are cached per configuring environment."""
    if uri.startswith("gs://"):
        return _gcs(os.environ.get("STORAGE_EMULATOR_HOST"))
    if uri.startswith("s3://"):
        return _s3(tuple(os.environ.get(name) for name in S3_ENVIRONMENT))
    return _Local()


DENIED_MARKERS = ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                  "HTTP status 403", "HTTP status 401")


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Turns the libraries' errors into one TlpError naming the URI and the fix."""
    from google.api_core import exceptions as google_errors
    from google.auth.exceptions import DefaultCredentialsError

    try:
        yield
    except DefaultCredentialsError as error:
        raise TlpError(f"no Google Cloud credentials to reach {uri}: set "
                       "GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default "
                       f"login`, or use Workload Identity ({error}).") from error
    except (google_errors.Forbidden, google_errors.Unauthorized) as error:
        raise _denied(uri, error) from error
    except (google_errors.NotFound, FileNotFoundError) as error:
        raise _missing(uri) from error
    except OSError as error:  # pyarrow's S3 errors carry the AWS error code in the message.
        message = str(error)
        if "NO_SUCH_BUCKET" in message:
            raise _missing(uri) from error
        if any(marker in message for marker in DENIED_MARKERS):
            raise _denied(uri, error) from error
        raise


def _missing(uri: str) -> TlpError:
    if is_remote(uri) and not _store(uri).bucket_exists(uri):
        return TlpError(f"{uri}: bucket {_bucket_uri(uri)} does not exist (or these "
                        "credentials cannot see it).")
    return MissingError(f"{uri} does not exist.")


def _denied(uri: str, error: Exception) -> TlpError:
    how = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the pod's IAM role)"
           if uri.startswith("s3://") else "the Google Cloud credentials (ADC)")
    return TlpError(f"access to {uri} was denied: check that {how} may use it ({error}).")


def list_files(uri: str | Path) -> list[str]:
    """Every file under a folder or prefix, recursively, sorted, as full paths/URIs; [] when
    there is none."""
    uri = str(uri)
    with _errors(uri):
        return sorted(_store(uri).list(uri))


def read_bytes(uri: str | Path) -> bytes:
    uri = str(uri)
    with _errors(uri):
        return _store(uri).read(uri)


def write_bytes(uri: str | Path, data: bytes) -> None:
    uri = str(uri)
    with _errors(uri):
        _store(uri).write(uri, data)


def write_new(uri: str | Path, data: bytes) -> bool:
    """Writes only if nothing exists at uri yet; False if something did. Atomic on local
    disks and GCS (a generation precondition); on S3 a check and then a write, so two
    writers racing within the same moment can both succeed."""
    uri = str(uri)
    with _errors(uri):
        return _store(uri).write_new(uri, data)


def exists(uri: str | Path) -> bool:
    """A file, or a folder/prefix with something in it."""
    uri = str(uri)
    with _errors(uri):
        return _store(uri).exists(uri)


def delete_tree(uri: str | Path) -> None:
    """Removes every file under a folder or prefix; nothing to remove is no error."""
    uri = str(uri)
    with _errors(uri):
        _store(uri).delete_tree(uri)


def from_artifact_uri(uri: str) -> str:
    """A KFP artifact URI as this module addresses it: minio://BUCKET/KEY (the launcher's
    scheme for Kubeflow's own store) is s3://BUCKET/KEY at the endpoint the environment names,
    which must then be set; other URIs are returned unchanged."""
    if not uri.startswith("minio://"):
        return uri
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        raise TlpError(f"{uri}: a minio:// pipeline root needs the store's S3 endpoint in "
                       "AWS_ENDPOINT_URL_S3 (e.g. http://minio-service.kubeflow:9000) and its "
                       "keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: compile with "
                       "--s3-endpoint and --s3-secret (README: Run on your Kubeflow "
                       "cluster).")
    return "s3://" + uri[len("minio://"):]


def upload_file(local: str | Path, uri: str | Path) -> None:
    uri = str(uri)
    with _errors(uri):
        _store(uri).upload(str(local), uri)


def download_file(uri: str | Path, local: str | Path) -> None:
    uri = str(uri)
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    with _errors(uri):
        _store(uri).download(uri, str(local))


@contextlib.contextmanager
def local_copy(uri: str | Path) -> Iterator[str]:
    """A local path of the file at uri: uri itself when local, else a download to a temporary
    folder (same file name, so its extension still tells the format), removed afterwards."""
    if not is_remote(uri):
        yield str(uri)
        return
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, posixpath.basename(str(uri).rstrip("/")))
        download_file(uri, local)
        yield local


def _in_parallel(function, *argument_lists) -> None:
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        for _ in pool.map(function, *argument_lists):  # Re-raises the first error.
            pass


def upload_dir(local_dir: str | Path, uri: str | Path) -> None:
    """Every file under local_dir to the same relative name under uri."""
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    _in_parallel(upload_file, files,
                 [join(uri, p.relative_to(local_dir).as_posix()) for p in files])


def download_dir(uri: str | Path, local_dir: str | Path) -> None:
    """Every file under uri to the same relative name under local_dir."""
    uris = list_files(uri)
    base = len(str(uri).rstrip("/")) + 1
    _in_parallel(download_file, uris, [Path(local_dir, u[base:]) for u in uris])
