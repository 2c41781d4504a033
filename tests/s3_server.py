"""A real S3-compatible server for tests: moto in server mode, in a subprocess.

The blob store talks to it over HTTP exactly as it would to S3 or MinIO (s3fs,
aiobotocore, signed requests), so the tests exercise the real client, not a mock of
it. The server listens on 127.0.0.1 only, at a free port, and is stopped when the
context manager exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds; moto imports a lot on first start
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it

# Dummy credentials: moto accepts any, and they exist only in the tests' environment.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
REGION = "us-east-1"


class S3Server:
    """A running moto server: its endpoint, the AWS_* variables that reach it, fresh buckets."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs to use this server and nothing else.

        The shared config and credentials files point nowhere and the EC2 metadata
        lookup is off, so a developer's own AWS setup can neither leak in nor be
        reached while tests run.
        """
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }

    def client(self):
        """A boto3 S3 client with explicit settings (it does not read the process environment's)."""
        import boto3

        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY, region_name=REGION
        ).client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        """Create a bucket no other test uses and return its name."""
        name = f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        """Every object key in a bucket, straight from the server (no fsspec cache in between)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _answers(endpoint: str) -> bool:
    """Whether an HTTP server answers at the endpoint (any status counts), bypassing proxies."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{endpoint}/moto-api/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(port: int, log) -> subprocess.Popen | None:
    """Start moto on a port and wait until it answers; None when it exited (port taken)."""
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return None
            if _answers(f"http://{HOST}:{port}"):
                return process
            time.sleep(0.1)
    except BaseException:
        _stop(process)
        raise
    _stop(process)
    raise RuntimeError(f"moto server on {HOST}:{port} did not answer within {START_TIMEOUT:.0f}s")


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Run a moto server for the duration of the block and yield it."""
    with tempfile.TemporaryDirectory(prefix="moto-") as directory:
        log_path = Path(directory) / "moto.log"
        with open(log_path, "wb") as log:
            process = None
            for _ in range(START_ATTEMPTS):
                port = free_port()
                process = _start(port, log)
                if process is not None:
                    break
            if process is None:
                log.flush()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto server failed to start {START_ATTEMPTS} times; its output:\n{tail}")
            try:
                yield S3Server(f"http://{HOST}:{port}")
            finally:
                _stop(process)
