"""The audit API as a user runs it: `python -m trainer serve` in a subprocess,
on 127.0.0.1 at a port uvicorn picks, with real tokens, talked to over HTTP.

Everything the server prints is collected (a reader thread keeps its pipe from
filling), so tests can check what it logs, and what it must never log.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

START_TIMEOUT = 60.0
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@dataclass
class ApiServer:
    url: str
    tokens: dict[str, str]  # name -> secret
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def client(self, token: str | None = "auditor", **kwargs) -> httpx.Client:
        headers = {} if token is None else {"Authorization": f"Bearer {self.tokens[token]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def log(self) -> str:
        return "".join(self.output)


def token_entries(tokens: dict[str, tuple[str, str]]) -> str:
    return ",".join(f"{name}:{role}:{secret}" for name, (role, secret) in tokens.items())


@contextlib.contextmanager
def running_api(env: dict[str, str], tokens: dict[str, tuple[str, str]]) -> Iterator[ApiServer]:
    """A live server with ``tokens`` ({name: (role, secret)}), stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer", "serve", "--host", "127.0.0.1", "--port", "0"],
        env={**env, "TRAINER_API_TOKENS": token_entries(tokens)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    port: list[int] = []

    def read() -> None:
        for line in process.stdout:
            output.append(line)
            match = _LISTENING.search(line)
            if match and not port:
                port.append(int(match.group(1)))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not found.wait(START_TIMEOUT) or not port:
            raise RuntimeError(f"the API server did not start:\n{''.join(output)[-3000:]}")
        server = ApiServer(f"http://127.0.0.1:{port[0]}", {name: secret for name, (_, secret) in tokens.items()}, process, output)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.25):
    """Poll until ``predicate()`` returns something truthy; return it (or fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def read_then_hang_up(server: ApiServer, path: str, token: str, at_least: int) -> bytes:
    """GET ``path`` over a raw socket, read at least ``at_least`` bytes of the answer
    (headers and the start of the body), then close the connection mid-response."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port)) as raw:
        raw.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.tokens[token]}\r\n\r\n".encode()
        )
        received = b""
        while len(received) < at_least:
            received += raw.recv(65536)
    return received
