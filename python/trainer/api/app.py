"""The audit API: runs, metrics, datasets and models over HTTP.

`create_app` builds the FastAPI application; `python -m trainer serve` runs it
under uvicorn. Every route but ``/health`` needs a bearer token (see
:mod:`trainer.api.tokens`), the OpenAPI document and its page included.
"""

from __future__ import annotations

import logging
import re
from importlib import metadata

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trainer.api.context import ApiContext, reader
from trainer.api.schemas import Health, Problem
from trainer.api.tokens import ApiToken, TokenRegistry
from trainer.errors import (
    ArtifactError,
    ConfigurationError,
    DatabaseUnavailable,
    DatasetError,
    NotFound,
    TrainerError,
)
from trainer.settings import Settings

log = logging.getLogger("trainer.api")

DESCRIPTION = """
Training runs, their metrics, the exact datasets they were trained on and the
models they produced, for the annotation app's SPA and for auditors.

Authenticate with `Authorization: Bearer <token>` (tokens come from
`TRAINER_API_TOKENS`). Role `reader` may GET everything; role `trainer` may also
queue runs. Every export and download is written to `training.audit_log`.
"""

ERROR_RESPONSES = {
    401: {"model": Problem, "description": "No token, or an unknown one."},
    404: {"model": Problem, "description": "No such run or model version."},
    409: {"model": Problem, "description": "The stored data cannot be served (altered, missing, or outside the store)."},
    503: {"model": Problem, "description": "The database is unreachable or not initialised."},
}


def status_for(exc: TrainerError) -> int:
    """The HTTP status of a user-facing error."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, ConfigurationError):
        return 422
    if isinstance(exc, DatabaseUnavailable):
        return 503
    if isinstance(exc, (DatasetError, ArtifactError)):
        return 409
    return 400


def _database_errors() -> tuple[type[BaseException], ...]:
    """Driver errors that mean the database went away mid-request."""
    errors: list[type[BaseException]] = []
    try:
        import psycopg

        errors.append(psycopg.OperationalError)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass
    import duckdb

    errors += [duckdb.IOException, duckdb.ConnectionException]
    return tuple(errors)


class SecurityHeaders:
    """Adds nosniff and no-store to every response (a pure ASGI middleware, so
    streamed downloads and client disconnects pass through untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: Settings, tokens: TokenRegistry) -> FastAPI:
    """The application for one database and artifact store."""
    from trainer.api import downloads, model_versions, runs

    app = FastAPI(
        title="training-db-pipeline audit API",
        version=metadata.version("training-db-pipeline"),
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=ERROR_RESPONSES,
    )
    app.state.context = ApiContext(settings, tokens)
    app.add_middleware(SecurityHeaders)

    @app.get("/health", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    async def health():
        """Whether the server can reach its database (no token needed; says nothing more)."""
        try:
            await run_in_threadpool(_ping, app.state.context)
        except Exception:  # noqa: BLE001 - any failure means unavailable
            body = Health(status="unavailable", database="unavailable", version=app.version)
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", database="ok", version=app.version)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(_: ApiToken = Depends(reader)):
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(_: ApiToken = Depends(reader)):
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    app.include_router(runs.router)
    app.include_router(model_versions.router)
    app.include_router(downloads.router)
    _install_error_handlers(app)
    return app


def _ping(context: ApiContext) -> None:
    with context.database.session() as session:
        session.scalar("select 1")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TrainerError)
    async def trainer_error(request: Request, exc: TrainerError):
        status = status_for(exc)
        if status == 422:
            # The shape of FastAPI's own validation errors, so clients parse one kind of 422.
            return JSONResponse({"detail": [{"loc": ["query"], "msg": str(exc), "type": "value_error"}]}, status_code=422)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    database_errors = _database_errors()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of one route; a path served by several routes has them all.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        if isinstance(exc, database_errors):
            log.warning("database error on %s %s: %s", request.method, request.url.path, _one_line(exc))
            return JSONResponse({"detail": f"the database is unavailable: {_one_line(exc)}"}, status_code=503)
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (see the server's log)"}, status_code=500)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
