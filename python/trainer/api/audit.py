"""Streamed downloads of the API. Their audit rows are written by the request guard
(:mod:`trainer.api.guard`), which sees every byte handed to the server and how the
response ended: complete, disconnected by the client, or failed midway."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class AuditedStreamingResponse(StreamingResponse):
    """A streamed download that releases its files however it ends.

    An error raised by ``chunks`` after the first byte propagates: the guard then
    leaves the response short of its end and audits it as failed.
    """

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[], None], media_type: str, headers: dict[str, str]):
        super().__init__(chunks, status_code=200, media_type=media_type, headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
