"""The train/eval split of CONTRACT §3, in Python, for data that does not pass
through dbt (the legacy CSV export).

A document is in ``eval`` when

    int(first 8 hex digits of md5(split_salt || document_id), base 16) mod 100 < eval_percent

and in ``train`` otherwise; md5 hashes the UTF-8 bytes, as both engines do
(macros/split.sql). ``SplitRule.from_project()`` takes ``split_salt`` and
``eval_percent`` from the vars in dbt_project.yml, so by default this rule and the
dbt models put every document on the same side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trainer.core.errors import ConfigurationError

SPLITS = ("train", "eval")
PROJECT_FILE = "dbt_project.yml"


def _no_overrides() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class SplitRule:
    """Which side of the split a document is on.

    ``overrides`` pins documents (document_id -> 'train' or 'eval'); a pinned
    document ignores the hash.
    """

    split_salt: str = ""
    eval_percent: int = 20
    # Out of the hash (a mapping is not hashable); equality still compares it.
    overrides: Mapping[str, str] = field(default_factory=_no_overrides, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.split_salt, str):
            raise ConfigurationError(f"split_salt must be a string, got {self.split_salt!r}")
        percent = self.eval_percent
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ConfigurationError(f"eval_percent must be an integer from 0 to 100, got {percent!r}")
        if not isinstance(self.overrides, Mapping):
            raise ConfigurationError(
                f"split overrides must map document ids to 'train' or 'eval', got {type(self.overrides).__name__}"
            )
        pinned: dict[str, str] = {}
        for document_id, side in self.overrides.items():
            if not isinstance(document_id, str):
                raise ConfigurationError(f"split override keys must be document ids (strings), got {document_id!r}")
            if side not in SPLITS:
                raise ConfigurationError(
                    f"split override for document {document_id!r} must be 'train' or 'eval', got {side!r}"
                )
            pinned[document_id] = side
        # A private read-only copy: the caller's dict can change without moving documents.
        object.__setattr__(self, "overrides", MappingProxyType(pinned))

    def bucket(self, document_id: str) -> int:
        """The document's hash bucket, 0..99 (overrides do not apply)."""
        digest = hashlib.md5((self.split_salt + document_id).encode("utf-8")).hexdigest()
        return int(digest[:8], 16) % 100

    def split_of(self, document_id: str) -> str:
        """'train' or 'eval' for a document (an override wins over the hash)."""
        pinned = self.overrides.get(document_id)
        if pinned is not None:
            return pinned
        return "eval" if self.bucket(document_id) < self.eval_percent else "train"

    @classmethod
    def from_project(
        cls,
        overrides: Mapping[str, str] | None = None,
        *,
        split_salt: str | None = None,
        eval_percent: int | str | None = None,
        project_dir: Path | None = None,
    ) -> SplitRule:
        """The rule dbt applies: ``split_salt`` and ``eval_percent`` from the vars
        in ``dbt_project.yml`` (of ``project_dir``, default the repository root),
        unless given explicitly here (as ``dbt --vars`` would)."""
        if split_salt is None or eval_percent is None:
            variables = _project_vars(Path(project_dir) if project_dir is not None else _default_project_dir())
            if split_salt is None:
                split_salt = _salt_var(variables)
            if eval_percent is None:
                eval_percent = _percent_var(variables)
        if not isinstance(eval_percent, int):
            eval_percent = _percent_value(eval_percent, "eval_percent")  # "30", as --vars would give it
        return cls(split_salt=split_salt, eval_percent=eval_percent, overrides={} if overrides is None else overrides)


_MISSING = object()


def _default_project_dir() -> Path:
    from trainer.core.settings import project_root

    return project_root()


class _ProjectVars(dict):
    """The vars of dbt_project.yml, remembering the file for messages."""

    def __init__(self, values: dict, file: Path):
        super().__init__(values)
        self.file = file


def _project_vars(project_dir: Path) -> _ProjectVars:
    import yaml

    file = project_dir / PROJECT_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"{file}: cannot read the split settings: {reason}") from None
    try:
        project = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigurationError(f"{file}: {where}not valid YAML ({problem})") from None
    if not isinstance(project, dict):
        raise ConfigurationError(f"{file}: not a dbt project file (expected a mapping at the top)")
    variables = project.get("vars") or {}
    if not isinstance(variables, dict):
        raise ConfigurationError(f"{file}: vars must be a mapping")
    merged = {key: value for key, value in variables.items() if not isinstance(value, dict)}
    # dbt lets a project scope vars under its own name; those win over global ones.
    scoped = variables.get(project.get("name"))
    if isinstance(scoped, dict):
        merged.update(scoped)
    return _ProjectVars(merged, file)


def _salt_var(variables: _ProjectVars) -> str:
    value = variables.get("split_salt", _MISSING)
    if value is _MISSING:
        raise ConfigurationError(
            f"{variables.file}: vars.split_salt is not set (dbt needs it; the contract default is \"\")"
        )
    # dbt renders the salt with Jinja's `string` filter: an integer reads as its digits.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ConfigurationError(f"{variables.file}: vars.split_salt must be a string, got {value!r} (quote it)")
    _refuse_jinja(value, "vars.split_salt", variables.file)
    return value


def _percent_var(variables: _ProjectVars) -> int:
    value = variables.get("eval_percent", _MISSING)
    if value is _MISSING:
        raise ConfigurationError(
            f"{variables.file}: vars.eval_percent is not set (dbt needs it; the contract default is 20)"
        )
    return _percent_value(value, f"{variables.file}: vars.eval_percent")


def _percent_value(value: Any, name: str) -> int:
    """eval_percent as macros/split.sql reads it: digits (surrounding spaces allowed), 0..100."""
    text = "" if isinstance(value, bool) else str(value).strip()
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        raise ConfigurationError(f"{name} must be an integer from 0 to 100, got {value!r}")
    return int(text)


def _refuse_jinja(value: str, name: str, file: Path) -> None:
    if "{{" in value or "{%" in value:
        raise ConfigurationError(
            f"{file}: {name} is a Jinja expression, which only dbt can evaluate; pass the value explicitly"
        )
