"""What every request shares (settings, tokens, stores) and the dependencies that
authenticate a request and hand routes the results store."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trainer.api.tokens import ApiToken, TokenRegistry
from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.errors import DatabaseUnavailable
from trainer.core.settings import Settings
from trainer.results.store import ResultsStore

REALM = 'Bearer realm="training-db-pipeline"'

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="A token from TRAINER_API_TOKENS. Role `reader`: every GET; role `trainer`: also POST.",
)


@dataclass
class ApiContext:
    settings: Settings
    tokens: TokenRegistry
    database: Database = field(init=False)
    store: ResultsStore = field(init=False)
    _artifacts: ArtifactStore | None = field(default=None, init=False, repr=False)
    _ready: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.database = Database(self.settings)
        self.store = ResultsStore(self.database)

    @property
    def artifacts(self) -> ArtifactStore:
        with self._lock:
            if self._artifacts is None:
                self._artifacts = ArtifactStore(self.settings.artifacts_url)
            return self._artifacts

    def ready_store(self) -> ResultsStore:
        """The results store, once its tables are known to exist (checked until they do)."""
        if not self._ready:
            with self.database.session() as session:
                if not self.store.is_ready(session):
                    # Not database.describe(): a client is not told where the database lives.
                    raise DatabaseUnavailable(
                        "the results tables are missing or out of date: run `python -m trainer init-db`"
                    )
            self._ready = True
        return self.store


def context_of(request: Request) -> ApiContext:
    return request.app.state.context


def results(request: Request) -> ResultsStore:
    return context_of(request).ready_store()


def require(role: str):
    """A dependency: the request's bearer token, which must allow ``role``."""

    def authenticated(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> ApiToken:
        state = request.scope.get("state", {})
        # The guard resolved the token already (so the audit row and the answer agree).
        if "auth" in state:
            token = state["auth"]
        else:
            token = context_of(request).tokens.authenticate(credentials.credentials if credentials else None)
        if token is None:
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": REALM})
        if not token.allows(role):
            raise HTTPException(403, f"token {token.name!r} has role {token.role}; this needs role {role}")
        request.state.token = token
        return token

    return authenticated


reader = require("reader")
trainer = require("trainer")
