"""components.storage against fake-gcs-server and moto_server (S3), and on local paths."""
import http.client
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from components import storage
from components.errors import TlpError


@pytest.fixture(params=["gcs_bucket", "s3_bucket", "local"])
def root(request, tmp_path) -> str:
    """A fresh, empty bucket URI, or a local folder."""
    if request.param == "local":
        return str(tmp_path / "local-root")
    return request.getfixturevalue(request.param)


def test_round_trip_listing_and_exists(root):
    for name in ("a/b/one.txt", "a/b/two.bin", "a/bc/three.txt", "top.txt"):
        storage.write_bytes(storage.join(root, name), name.encode())

    assert storage.read_bytes(storage.join(root, "a/b/two.bin")) == b"a/b/two.bin"
    # A prefix is a folder: a/b does not take a/bc along.
    assert storage.list_files(storage.join(root, "a/b")) == [
        storage.join(root, "a/b/one.txt"), storage.join(root, "a/b/two.bin")]
    assert len(storage.list_files(root)) == 4
    assert storage.list_files(storage.join(root, "nothing")) == []
    assert storage.exists(storage.join(root, "a/bc/three.txt"))
    assert storage.exists(storage.join(root, "a/b"))
    assert not storage.exists(storage.join(root, "a/b/none.txt"))
    storage.write_bytes(storage.join(root, "top.txt"), b"replaced")
    assert storage.read_bytes(storage.join(root, "top.txt")) == b"replaced"


def test_upload_and_download_folders(root, tmp_path):
    source = tmp_path / "source"
    files = {"x.txt": b"x", "sub/y.bin": bytes(range(256)), "sub/deeper/z": b""}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)

    storage.upload_dir(source, storage.join(root, "copy"))
    assert storage.list_files(storage.join(root, "copy")) == sorted(
        storage.join(root, "copy", name) for name in files)
    storage.download_dir(storage.join(root, "copy"), tmp_path / "back")
    assert {p.relative_to(tmp_path / "back").as_posix(): p.read_bytes()
            for p in (tmp_path / "back").rglob("*") if p.is_file()} == files

    storage.upload_file(source / "x.txt", storage.join(root, "single/x.txt"))
    storage.download_file(storage.join(root, "single/x.txt"), tmp_path / "new" / "x.txt")
    assert (tmp_path / "new" / "x.txt").read_bytes() == b"x"


def test_delete_tree_removes_a_folder_and_nothing_beside_it(root):
    for name in ("m.state/a", "m.state/epoch-0001/b", "m.state2/c"):
        storage.write_bytes(storage.join(root, name), b"x")
    storage.delete_tree(storage.join(root, "m.state"))
    assert not storage.exists(storage.join(root, "m.state"))
    assert storage.list_files(root) == [storage.join(root, "m.state2/c")]
    storage.delete_tree(storage.join(root, "m.state"))  # Nothing there: no error.


def test_write_new_never_replaces(root):
    claim = storage.join(root, "claims/1")
    assert storage.write_new(claim, b"first")
    assert not storage.write_new(claim, b"second")
    assert storage.read_bytes(claim) == b"first"


def test_local_copy_of_a_bucket_file_is_temporary(root):
    storage.write_bytes(storage.join(root, "w/model.keras"), b"weights")
    with storage.local_copy(storage.join(root, "w/model.keras")) as local:
        assert local.endswith("model.keras") and Path(local).read_bytes() == b"weights"
    assert Path(local).exists() == (not storage.is_remote(root))


def test_missing_object_names_the_uri_and_is_a_file_not_found(root):
    missing = storage.join(root, "no/such/file.txt")
    with pytest.raises(TlpError, match=f"{missing} does not exist") as raised:
        storage.read_bytes(missing)
    assert isinstance(raised.value, FileNotFoundError)  # sources.read's rejections rely on it


@pytest.mark.parametrize("bucket_fixture", ["gcs_bucket", "s3_bucket"])
def test_missing_bucket_is_named(request, bucket_fixture):
    bucket = request.getfixturevalue(bucket_fixture) + "-missing"
    with pytest.raises(TlpError, match=f"bucket {bucket} does not exist") as raised:
        storage.read_bytes(bucket + "/file.txt")
    assert not isinstance(raised.value, FileNotFoundError)  # fails the run, rejects nothing
    with pytest.raises(TlpError, match=f"bucket {bucket} does not exist"):
        storage.list_files(bucket + "/folder")


def test_missing_google_credentials_are_named(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    with pytest.raises(TlpError, match="no Google Cloud credentials to reach gs://b/k"):
        storage.read_bytes("gs://b/k")


class FlakyProxy:
    """An HTTP proxy in front of a storage server that answers `status` to the first `fail`
    requests for which `when(method, path)` holds, and forwards everything else. It records
    (method, path, status) of every request, and rewrites the server's address in Location
    headers (GCS resumable sessions) so clients keep coming through it."""

    def __init__(self, target: str, fail: int = 0, status: int = 503, body: bytes = b"",
                 when=lambda method, path: True):
        self.target = urlparse(target).netloc
        self.remaining, self.status, self.body, self.when = fail, status, body, when
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def failed(self) -> list[tuple[str, str, int]]:
        return [r for r in self.requests if r[2] == self.status]

    def _decide(self, method: str, path: str) -> bool:
        with self.lock:
            fail = self.remaining > 0 and self.when(method, path)
            self.remaining -= fail
            return fail

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes):
                proxy.requests.append((self.command, self.path, status))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self):
                body = self._body()
                if proxy._decide(self.command, self.path):
                    return self._reply(proxy.status, [
                        ("Content-Length", str(len(proxy.body))),
                        ("Content-Type", "application/xml")], proxy.body)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() != "transfer-encoding"}
                if self.headers.get("Transfer-Encoding"):
                    headers["Content-Length"] = str(len(body))
                connection = http.client.HTTPConnection(proxy.target, timeout=60)
                connection.request(self.command, self.path, body, headers)
                response = connection.getresponse()
                data = response.read()
                kept = [(k, v.replace(proxy.target, urlparse(proxy.url).netloc))
                        for k, v in response.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection",
                                             "content-length")]
                length = response.getheader("Content-Length") if self.command == "HEAD" \
                    else str(len(data))
                self._reply(response.status, kept + [("Content-Length", length or "0")], data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward

        return Handler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(monkeypatch, gcs_server, s3_server):
    """make(bucket_uri, **FlakyProxy options): points the bucket's scheme at a new proxy."""
    proxies = []

    def make(bucket: str, **options) -> FlakyProxy:
        gcs = bucket.startswith("gs://")
        proxy = FlakyProxy(gcs_server if gcs else s3_server, **options)
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST" if gcs else "AWS_ENDPOINT_URL_S3", proxy.url)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.mark.parametrize("bucket_fixture", ["gcs_bucket", "s3_bucket"])
def test_transient_failures_are_retried(request, flaky, bucket_fixture):
    bucket = request.getfixturevalue(bucket_fixture)
    proxy = flaky(bucket, fail=2)

    storage.write_bytes(bucket + "/retried.txt", b"still written")
    assert len(proxy.failed()) == 2  # The server really answered 503 twice...
    assert storage.read_bytes(bucket + "/retried.txt") == b"still written"  # ...and yet.

    proxy.remaining = 1
    assert storage.list_files(bucket) == [bucket + "/retried.txt"]
    assert len(proxy.failed()) == 3


def test_large_gcs_upload_is_resumable_and_survives_a_failed_chunk(gcs_bucket, flaky,
                                                                     monkeypatch, tmp_path):
    monkeypatch.setattr(storage, "GCS_CHUNK_SIZE", 1024 * 1024)
    # Over google-cloud-storage's 8 MiB threshold for resumable uploads.
    data = os.urandom(9 * 1024 * 1024 + 1000)
    (tmp_path / "large").write_bytes(data)
    chunks = []
    proxy = flaky(gcs_bucket, fail=1, when=lambda method, path: method == "PUT" and
                  chunks.append(path) is None and len(chunks) == 3)

    storage.upload_file(tmp_path / "large", gcs_bucket + "/large")
    assert any("uploadType=resumable" in path for _, path, _ in proxy.requests)
    assert len(proxy.failed()) == 1  # The third chunk failed once and was sent again.
    assert sum(method == "PUT" for method, _, status in proxy.requests if status < 400) == 10
    storage.download_file(gcs_bucket + "/large", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_large_s3_upload_is_multipart_and_survives_a_failed_part(s3_bucket, flaky, tmp_path):
    data = os.urandom(12 * 1024 * 1024)
    (tmp_path / "large").write_bytes(data)
    proxy = flaky(s3_bucket, fail=1, when=lambda method, path: "partNumber=2" in path)

    storage.upload_file(tmp_path / "large", s3_bucket + "/large")
    assert any(method == "POST" and path.endswith("?uploads") for method, path, _ in
               proxy.requests)
    parts = {path.split("partNumber=")[1].split("&")[0] for _, path, status in proxy.requests
             if "partNumber=" in path and status < 400}
    assert len(parts) >= 2 and len(proxy.failed()) == 1
    storage.download_file(s3_bucket + "/large", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_s3_access_denied_names_the_credentials(s3_bucket, flaky):
    flaky(s3_bucket, fail=100, status=403, body=(
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
        b"<Message>The AWS Access Key Id you provided does not exist.</Message></Error>"))
    with pytest.raises(TlpError, match=f"access to {s3_bucket}/x was denied: check that "
                                       "AWS_ACCESS_KEY_ID"):
        storage.read_bytes(s3_bucket + "/x")


def test_join_and_is_remote():
    assert storage.join("gs://b/", "x/", "/y") == "gs://b/x/y"
    assert storage.join("runs", "x") == os.path.join("runs", "x")
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b")
    assert not storage.is_remote(Path("/tmp/x"))
