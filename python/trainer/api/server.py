"""How `python -m trainer serve` runs the app: uvicorn with its limits set explicitly.

| setting | value | why |
|---|---|---|
| protocol | h11 | its header limit below applies (httptools has its own, fixed) |
| `h11_max_incomplete_event_size` | 16 KiB | at most this much of an unfinished request head is buffered; past it, 400 |
| `timeout_keep_alive` | 5 s | an idle keep-alive connection is closed after this |
| `limit_concurrency` | 100 | connections and requests at once; past it, 503 (slow clients cannot take every slot) |
| `timeout_graceful_shutdown` | 10 s | on stop, downloads in flight get this long, then are cut off (and audited) |

A body is read by the app itself, after the token, up to MAX_BODY_BYTES and
within BODY_TIMEOUT_SECONDS (trainer.api.guard). uvicorn has no timeout for a
client that sends its request line and headers slowly: a reverse proxy in front
(TLS is needed anyway) should set one (nginx: client_header_timeout).
"""

from __future__ import annotations

import logging

HTTP_PROTOCOL = "h11"
MAX_HEADER_BYTES = 16 * 1024
KEEP_ALIVE_SECONDS = 5
LIMIT_CONCURRENCY = 100
GRACEFUL_SHUTDOWN_SECONDS = 10


def run_server(app, host: str, port: int, log_level: str) -> None:
    import uvicorn

    from trainer.api.guard import RedactCredentials

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        http=HTTP_PROTOCOL,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    # Config has set up uvicorn's loggers by now; the filter stays for the server's life.
    logging.getLogger("uvicorn.access").addFilter(RedactCredentials())
    uvicorn.Server(config).run()
