"""The request guard: what every request goes through before and after its route.

A pure ASGI middleware (streamed downloads and client disconnects pass through
untouched) that

- gives each request an id, sent back as ``X-Request-ID``, under which the
  server's log keeps what the client is not told (paths, driver messages);
- resolves the bearer token once, so routes and the audit log agree on who asked;
- writes exactly one ``training.audit_log`` row for every request to an audited
  route, whatever became of it: complete, cut off by the client, failed midway,
  or refused (any 4xx: 401, 403, 404, 409, 413, 422, ...);
- turns a download that fails after its first byte into a connection cut off
  short of its end, logged in one line: never a well-formed response, never a traceback.

Also here: the body limit (counted while reading), Content-Disposition per
RFC 6266, and the access-log filter that keeps credentials out of the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainer.results.store import AuditEntry, utcnow

log = logging.getLogger("trainer.api")

# POST /training-runs: the largest TrainingRequest is under 2 KiB.
MAX_BODY_BYTES = 64 * 1024
# A body that trickles in slower than this is abandoned (408): it holds a connection.
BODY_TIMEOUT_SECONDS = 30.0
# How much of the client's own input an error body or an audit row repeats.
EXCERPT_CHARS = 64

# (method, route template) of every request that exports, downloads, queues or lists
# the log, and of every request of the review loop (the app's segments, proposals,
# propose jobs: trainer.api.review_loop).
AUDITED_ROUTES = {
    ("GET", "/training-runs/{run_id}/dataset"),
    ("GET", "/datasets/current"),
    ("GET", "/model-versions/{model_version_id}/download"),
    ("GET", "/audit-log"),
    ("POST", "/training-runs"),
    ("GET", "/review-queue"),
    ("GET", "/review-queue/documents"),
    ("GET", "/model-versions/{model_version_id}/proposals"),
    ("GET", "/model-versions/{model_version_id}/acceptance"),
    ("POST", "/model-versions/{model_version_id}/propose"),
    ("GET", "/propose-jobs/{job_id}"),
}
_AUDITED_PATTERNS = [
    (method, route, re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "([^/]*)", re.escape(route)) + "$"))
    for method, route in AUDITED_ROUTES
]

TOKEN_VALID, TOKEN_NONE, TOKEN_UNKNOWN = "valid", "none", "unknown"


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of what a client sent, for an error or a log row."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class Attempt:
    """What the audit row of one request will say; routes add to it as they learn."""

    method: str
    route: str
    object_id: str | None
    token_name: str
    token_state: str
    request_id: str
    started: Any = field(default_factory=utcnow)
    details: dict = field(default_factory=dict)
    status_code: int | None = None
    bytes_sent: int = 0
    error: str | None = None
    _digest: Any = field(default_factory=hashlib.sha256, repr=False)

    def sent(self, chunk: bytes) -> None:
        self.bytes_sent += len(chunk)
        self._digest.update(chunk)

    def entry(self, outcome: str) -> AuditEntry:
        return AuditEntry(
            audit_id=None,
            occurred_at=self.started,
            finished_at=utcnow(),
            token_name=self.token_name,
            method=self.method,
            route=self.route,
            object_id=self.object_id,
            details=self.details,
            status_code=self.status_code or 500,
            bytes_sent=self.bytes_sent,
            sha256=self._digest.hexdigest() if self.bytes_sent or outcome == "complete" else None,
            outcome=outcome,
            error=self.error,
            token_state=self.token_state,
            request_id=self.request_id,
        )


def attempt_of(request: Request) -> Attempt | None:
    return request.scope.get("state", {}).get("attempt")


def request_id_of(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


class RequestGuard:
    def __init__(self, app: ASGIApp, context):
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = self.context.tokens.authenticate(_bearer(scope))
        state["auth"] = token
        attempt = self._attempt(scope, token, request_id)
        state["attempt"] = attempt

        progress = {"started": False, "complete": False, "disconnected": False, "length": None, "error_body": b""}

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                progress["disconnected"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress["started"] = True
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                for name, value in ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")):
                    if all(existing.lower() != name for existing, _ in headers):
                        headers.append((name, value))
                for name, value in headers:
                    if name.lower() == b"content-length":
                        progress["length"] = int(value)
                if attempt is not None:
                    attempt.status_code = message["status"]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and attempt is not None:
                body = message.get("body", b"")
                last = not message.get("more_body", False)
                # Counted when handed to a server whose client was still there.
                gone = progress["disconnected"]
                if not gone:
                    if (attempt.status_code or 500) < 400:
                        attempt.sent(body)
                    elif len(progress["error_body"]) < 4096:
                        progress["error_body"] += body[:4096]
                if last and not gone:
                    # Written before the end goes out: a client holding a whole answer
                    # can count on its row being there.
                    progress["complete"] = True
                    await self._settle(attempt, progress, None)
                await send(message)
                return
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, watching_receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - answered below, in one line
            # Starlette wraps an error its handlers know that came too late to answer.
            error = exc.__cause__ if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, Exception) else exc
        finally:
            if attempt is not None and not progress.get("recorded"):
                await self._settle(attempt, progress, error)
        if error is None:
            return
        if not progress["started"]:
            raise error  # Starlette answers 500 (its handler logs it)
        # Too late for an error status: leave the response short of its end, and say
        # why in one line (uvicorn then closes the connection).
        log.error(
            "request %s: %s %s cut off after %d bytes: %s",
            request_id, scope.get("method"), scope.get("path"), attempt.bytes_sent if attempt else -1, _one_line(error),
        )

    def _attempt(self, scope: Scope, token, request_id: str) -> Attempt | None:
        method, path = scope.get("method", ""), scope.get("path", "")
        for audited_method, route, pattern in _AUDITED_PATTERNS:
            match = pattern.match(path)
            if method == audited_method and match:
                object_id = excerpt(match.group(1)) if match.groups() else None
                if token is not None:
                    name, state = token.name, TOKEN_VALID
                elif _bearer(scope) is None:
                    name, state = "(none)", TOKEN_NONE
                else:
                    name, state = "(unknown)", TOKEN_UNKNOWN
                return Attempt(method, route, object_id, name, state, request_id)
        return None

    async def _settle(self, attempt: Attempt, progress: dict, error: BaseException | None) -> None:
        progress["recorded"] = True
        outcome = self._outcome(attempt, progress, error, private_names(self.context))
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(self._record, attempt, outcome)

    @staticmethod
    def _outcome(attempt: Attempt, progress: dict, error: BaseException | None, private: list[str]) -> str:
        """complete; disconnected (the client left first); refused (a 4xx answer: the
        request, its token or the stored data was turned down before any data went
        out); failed (a 5xx, or cut off midway by an error)."""
        if error is not None:
            attempt.error = attempt.error or excerpt(public_message(str(error), private), 300)
            if not progress["started"]:
                attempt.status_code = 500
            return "failed"
        status = attempt.status_code or 500
        if status >= 400:
            attempt.error = attempt.error or _reason(progress["error_body"], status)
            return "refused" if status < 500 else "failed"
        # With a Content-Length the client has everything once that many bytes went
        # out, and may hang up before the server's closing (empty) message.
        if progress["complete"] or (progress["length"] is not None and attempt.bytes_sent == progress["length"]):
            return "complete"
        return "disconnected"

    def _record(self, attempt: Attempt, outcome: str) -> None:
        """Write the row. A failure to write is logged, never raised: the client's
        response is already decided, and the log line says which row is missing."""
        try:
            self.context.store.record_audit(attempt.entry(outcome))
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.error(
                "request %s: audit log: could not record %s %s (object %s, token %s, %s, status %s, %d bytes): %s",
                attempt.request_id, attempt.method, attempt.route, attempt.object_id, attempt.token_name, outcome,
                attempt.status_code, attempt.bytes_sent, _one_line(exc),
            )


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


# A URI (any scheme) or an absolute path: where the server keeps things is not the client's business.
_PRIVATE = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"]*|(?<![\w.~-])/[^\s'"]+""")


def public_message(message: str, private: list[str] = ()) -> str:
    """An error for the client: the object and the problem, without server paths."""
    for name in sorted(private, key=len, reverse=True):
        message = message.replace(name, "…")
    return _one_line(_PRIVATE.sub("…", message))


def private_names(context) -> list[str]:
    """Where this server keeps things (an S3 bucket's path has no scheme for the pattern to see)."""
    settings = context.settings
    names = [settings.artifacts_url, str(settings.duckdb_path)]
    try:
        names.append(context.artifacts.root)
    except Exception:  # noqa: BLE001 - a store that cannot be opened has no root to hide
        pass
    return [name for name in names if name and name != "/"]


def _reason(body: bytes, status: int) -> str:
    """The one-line `detail` of an error body, bounded."""
    try:
        detail = json.loads(body.decode("utf-8"))["detail"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"status {status}"
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                parts.append(f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}")
        detail = "; ".join(parts) or f"status {status}"
    return excerpt(_one_line(str(detail)), 300)


def _one_line(exc: BaseException | str) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body, refused with 413 as soon as more than ``limit`` bytes
    arrive (counted as they are read: Content-Length is only a hint to refuse
    early), and with 408 when it trickles in for longer than BODY_TIMEOUT_SECONDS."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    parts: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"the body is larger than {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise HTTPException(408, f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s") from None
    return b"".join(parts)


def content_disposition(filename: str) -> str:
    """``attachment`` with a quoted ASCII fallback and the exact name as ``filename*``
    (RFC 6266, RFC 8187): no quote, backslash, control or bidi character reaches the header."""
    fallback = "".join(
        char if (char.isascii() and (char.isalnum() or char in "._-")) else "_"
        for char in unicodedata.normalize("NFKD", filename)
        if not unicodedata.combining(char)
    ).strip("._") or "download"
    return f"attachment; filename=\"{fallback[:150]}\"; filename*=UTF-8''{quote(filename, safe='')}"


# Query parameters whose value is a credential, whatever a client meant by sending it.
_CREDENTIAL_PARAMETER = re.compile(
    r"(?i)((?:^|[?&;])[^=&;]*(?:token|secret|passw|key|auth|credential|signature|session)[^=&;]*=)[^&;#]*"
)


def redact_query(path: str) -> str:
    if "?" not in path:
        return path
    base, _, query = path.partition("?")
    return base + "?" + _CREDENTIAL_PARAMETER.sub(r"\1[redacted]", query)


class RedactCredentials(logging.Filter):
    """On uvicorn's access log: a credential sent in a query string is never written."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact_query(args[2]), args[3], args[4])
        return True
