"""The audit API: runs, metrics, datasets and models over HTTP.

`create_app` builds the FastAPI application; `python -m trainer serve` runs it
under uvicorn. Every route but ``/health`` needs a bearer token (see
:mod:`trainer.api.tokens`), the OpenAPI document and its page included.
"""

from __future__ import annotations

import logging
import math
import re
from importlib import metadata

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainer.api.context import ApiContext, reader
from trainer.api.guard import RequestGuard, attempt_of, excerpt, private_names, public_message, request_id_of
from trainer.api.schemas import Health, Problem, ProposeRequest, TrainingRequest
from trainer.api.tokens import ApiToken, TokenRegistry
from trainer.core.errors import (
    ArtifactError,
    ConfigurationError,
    DatabaseUnavailable,
    DatasetError,
    NotFound,
    TrainerError,
)
from trainer.core.settings import Settings

log = logging.getLogger("trainer.api")

DESCRIPTION = """
Training runs, their metrics, the exact datasets they were trained on and the
models they produced, for the annotation app's SPA and for auditors.

Authenticate with `Authorization: Bearer <token>` (tokens come from
`TRAINER_API_TOKENS`). Role `reader` may GET everything; role `trainer` may also
queue runs and propose jobs. Every export, download and queued job, and every
request of the review loop, is written to `training.audit_log`.
"""

ERROR_RESPONSES = {
    401: {"model": Problem, "description": "No token, or an unknown one."},
    404: {"model": Problem, "description": "No such run, model version or propose job."},
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


def create_app(settings: Settings, tokens: TokenRegistry) -> FastAPI:
    """The application for one database and artifact store."""
    from trainer.api import downloads, model_versions, review_loop, runs

    app = FastAPI(
        title="training-db-pipeline audit API",
        version=metadata.version("training-db-pipeline"),
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        responses=ERROR_RESPONSES,
        # A redirect to the path without its slash would be built from the Host
        # header, which the client chose; an unknown path is a 404 instead.
        redirect_slashes=False,
    )
    context = ApiContext(settings, tokens)
    app.state.context = context
    app.add_middleware(RequestGuard, context=context)

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
    app.include_router(review_loop.router)
    _install_error_handlers(app)
    _publish_body_schema(app)
    return app


def _publish_body_schema(app: FastAPI) -> None:
    """POST /training-runs and POST /model-versions/{id}/propose read their own body
    (after the token, up to a limit), so FastAPI does not see TrainingRequest and
    ProposeRequest: put their schemas where the routes point."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = generate()
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (TrainingRequest, ProposeRequest):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi


def _ping(context: ApiContext) -> None:
    with context.database.session() as session:
        session.scalar("select 1")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TrainerError)
    async def trainer_error(request: Request, exc: TrainerError):
        status = status_for(exc)
        request_id = request_id_of(request)
        log.warning("request %s: %d %s %s: %s", request_id, status, request.method, request.url.path, _one_line(exc))
        if status == 503:
            return JSONResponse({"detail": f"the database is unavailable (request id {request_id})"}, status_code=503)
        message = public_message(str(exc), private_names(app.state.context))
        attempt = attempt_of(request)
        label = _OBJECTS.get(attempt.route) if attempt is not None else None
        if status == 409 and label and attempt.object_id and f"{label} {attempt.object_id}" not in message:
            message = f"{label} {attempt.object_id}: {message}"
        if status == 422:
            # The shape of FastAPI's own validation errors, so clients parse one kind of 422.
            return JSONResponse({"detail": [{"loc": ["query"], "msg": message, "type": "value_error"}]}, status_code=422)
        if status >= 409:
            message += f" (request id {request_id})"
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": bounded_errors(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of one route; a path served by several routes has them all.
            headers["Allow"] = ", ".join(_allowed_methods(app, request.url.path))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    async def database_error(request: Request, exc: Exception):
        request_id = request_id_of(request)
        log.warning("request %s: database error on %s %s: %s", request_id, request.method, request.url.path, _one_line(exc))
        return JSONResponse({"detail": f"the database is unavailable (request id {request_id})"}, status_code=503)

    # Registered per class (not under Exception) so that they are answered inside the
    # guard, which then audits the 503 the client really got.
    for error_class in _database_errors():
        app.add_exception_handler(error_class, database_error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        request_id = request_id_of(request)
        log.error("request %s: unexpected error on %s %s: %s", request_id, request.method, request.url.path, _one_line(exc))
        # Answered outside the guard (Starlette's last resort), so its headers are set here.
        headers = {"X-Request-ID": request_id, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        return JSONResponse({"detail": f"internal error (request id {request_id})"}, status_code=500, headers=headers)


_OBJECTS = {
    "/training-runs/{run_id}/dataset": "training run",
    "/model-versions/{model_version_id}/download": "model version",
    "/model-versions/{model_version_id}/proposals": "model version",
    "/model-versions/{model_version_id}/acceptance": "model version",
    "/model-versions/{model_version_id}/propose": "model version",
}
def bounded_errors(errors) -> list[dict]:
    """FastAPI's validation errors, bounded: at most 20, each naming its field, with
    at most an excerpt of the input (JSON-safe: NaN and Infinity become text)."""
    bounded = []
    for error in list(errors)[:20]:
        item = {
            "loc": [part if isinstance(part, int) else excerpt(str(part)) for part in list(error.get("loc", ()))[:8]],
            "msg": excerpt(str(error.get("msg", "")), 200),
            "type": str(error.get("type", "value_error")),
        }
        if "input" in error:
            item["input"] = _input_excerpt(error["input"])
        bounded.append(item)
    return bounded


def _input_excerpt(value):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (dict, list, tuple)):
        return excerpt(f"<{type(value).__name__} of {len(value)}>")
    return excerpt(str(value))


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
