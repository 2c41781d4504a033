"""API tokens: bearer secrets from the environment, each with a name and a role.

``TRAINER_API_TOKENS`` holds entries ``name:role:secret`` separated by commas or
newlines; ``TRAINER_API_TOKENS_FILE`` names a file of such entries, one per line
(``#`` starts a comment), for secrets mounted as files. Roles:

- ``reader``: every GET (runs, metrics, datasets, models, the audit log);
- ``trainer``: a reader that may also queue runs (``POST /training-runs``) and
  propose jobs (``POST /model-versions/{id}/propose``).

Only the sha256 of each secret is kept in memory, and a presented token is
compared with every configured one in constant time. The name, never the
secret, is what the audit log and the server's messages show.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trainer.core.errors import ConfigurationError

ROLES = ("reader", "trainer")
TOKENS_VARIABLE = "TRAINER_API_TOKENS"
TOKENS_FILE_VARIABLE = "TRAINER_API_TOKENS_FILE"
MIN_SECRET_LENGTH = 24
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# RFC 6750's token68: what a bearer token may contain.
_SECRET = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


@dataclass(frozen=True)
class ApiToken:
    name: str
    role: str
    secret_sha256: bytes = field(repr=False)

    def allows(self, role: str) -> bool:
        return self.role == role or (self.role == "trainer" and role == "reader")


class TokenRegistry:
    def __init__(self, tokens: list[ApiToken]):
        if not tokens:
            raise ConfigurationError(
                f"no API token configured: set {TOKENS_VARIABLE} (name:role:secret, roles {', '.join(ROLES)}) "
                f"or {TOKENS_FILE_VARIABLE}; `python -m trainer new-token NAME` makes one"
            )
        self.tokens = tokens

    def authenticate(self, presented: str | None) -> ApiToken | None:
        """The token whose secret was presented, or None. Every configured token is
        compared, always, so the time taken says nothing about which came close."""
        if not presented:
            return None
        candidate = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for token in self.tokens:
            if hmac.compare_digest(candidate, token.secret_sha256):
                found = token
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenRegistry:
        env = os.environ if environ is None else environ
        entries: list[tuple[str, str]] = []
        inline = env.get(TOKENS_VARIABLE, "")
        for number, entry in enumerate(re.split(r"[,\n]", inline), start=1):
            if entry.strip():
                entries.append((f"{TOKENS_VARIABLE} entry {number}", entry.strip()))
        file_name = env.get(TOKENS_FILE_VARIABLE, "").strip()
        if file_name:
            path = Path(file_name).expanduser()
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"{path} ({TOKENS_FILE_VARIABLE}): cannot read: {exc}") from exc
            for number, line in enumerate(lines, start=1):
                text = line.split("#", 1)[0].strip()
                if text:
                    entries.append((f"{path}, line {number}", text))
        return cls(parse_entries(entries))


def parse_entries(entries: list[tuple[str, str]]) -> list[ApiToken]:
    """Tokens from ``(where, "name:role:secret")`` pairs; errors name the entry, never the secret."""
    tokens: list[ApiToken] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for where, entry in entries:
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ConfigurationError(f"{where}: expected name:role:secret")
        name, role, secret = (part.strip() for part in parts)
        if not _NAME.match(name):
            raise ConfigurationError(f"{where}: token name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise ConfigurationError(f"{where} ({name}): role {role!r} is not one of {', '.join(ROLES)}")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(f"{where} ({name}): the secret is shorter than {MIN_SECRET_LENGTH} characters")
        if not _SECRET.match(secret):
            raise ConfigurationError(
                f"{where} ({name}): the secret may hold only letters, digits and - . _ ~ + / (then = padding)"
            )
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        if name in names:
            raise ConfigurationError(f"{where}: token name {name!r} is used twice")
        if digest in digests:
            raise ConfigurationError(f"{where} ({name}): the same secret is configured twice")
        names.add(name)
        digests.add(digest)
        tokens.append(ApiToken(name, role, digest))
    return tokens


def new_token_entry(name: str, role: str) -> str:
    """A fresh ``name:role:secret`` entry with a 256-bit random secret."""
    if not _NAME.match(name):
        raise ConfigurationError(f"token name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise ConfigurationError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return f"{name}:{role}:{secrets.token_urlsafe(32)}"
