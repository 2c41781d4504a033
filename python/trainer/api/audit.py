"""The audit log of the API: every export, download and queued run, with who
(the token's name), what (route and object id), how much (bytes and their sha256)
and how it ended (complete, disconnected by the client, or failed midway)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from trainer.api.tokens import ApiToken
from trainer.results_store import AuditEntry, ResultsStore, utcnow

log = logging.getLogger("trainer.api")


class Audit:
    """One audited request, from its start to the row it leaves in training.audit_log."""

    def __init__(
        self, store: ResultsStore, token: ApiToken, method: str, route: str, object_id: Any, details: dict | None = None
    ):
        self.store = store
        self.token = token
        self.method = method
        self.route = route
        self.object_id = None if object_id is None else str(object_id)
        self.details = dict(details or {})
        self.started = utcnow()
        self.bytes_sent = 0
        self._digest = hashlib.sha256()

    def sent(self, chunk: bytes) -> None:
        self.bytes_sent += len(chunk)
        self._digest.update(chunk)

    def record(self, status_code: int, outcome: str, error: str | None = None) -> None:
        """Write the row. A failure to write is logged, never raised: the client's
        response is already decided, and the log line says which row is missing."""
        entry = AuditEntry(
            audit_id=None,
            occurred_at=self.started,
            finished_at=utcnow(),
            token_name=self.token.name,
            method=self.method,
            route=self.route,
            object_id=self.object_id,
            details=self.details,
            status_code=status_code,
            bytes_sent=self.bytes_sent,
            sha256=self._digest.hexdigest() if self.bytes_sent or outcome == "complete" else None,
            outcome=outcome,
            error=error,
        )
        try:
            self.store.record_audit(entry)
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.error(
                "audit log: could not record %s %s (object %s, token %s, %s, %d bytes): %s",
                self.method, self.route, self.object_id, self.token.name, outcome, self.bytes_sent, exc,
            )


class AuditedStreamingResponse(StreamingResponse):
    """A streamed download whose audit row is written when it ends, however it ends.

    Bytes are counted as they are handed to the server; a client that goes away
    leaves an ``disconnected`` row with what it got so far.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        audit: Audit,
        on_close: Callable[[], None],
        media_type: str,
        headers: dict[str, str],
    ):
        super().__init__(chunks, status_code=200, media_type=media_type, headers=headers)
        self.audit = audit
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"disconnected": False, "complete": False}

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            return message

        async def counting_send(message: Message) -> None:
            # Counted when handed to a server whose client was still there.
            gone = state["disconnected"]
            await send(message)
            if message["type"] == "http.response.body" and not gone:
                self.audit.sent(message.get("body", b""))
                if not message.get("more_body", False):
                    state["complete"] = True

        error: BaseException | None = None
        try:
            await super().__call__(scope, watching_receive, counting_send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self._finish, state, error)

    def _finish(self, state: dict, error: BaseException | None) -> None:
        self.on_close()
        # With a Content-Length the client has everything once that many bytes went
        # out, and may hang up before the server's closing (empty) message.
        length = self.headers.get("content-length")
        if state["complete"] or (length is not None and self.audit.bytes_sent == int(length)):
            self.audit.record(200, "complete")
        elif state["disconnected"] or error is None or isinstance(error, (OSError, anyio.get_cancelled_exc_class())):
            self.audit.record(200, "disconnected")
        else:
            self.audit.record(200, "failed", " ".join(str(error).split()) or type(error).__name__)
