"""Point-in-time datasets: ``training_examples`` as it was at a UTC timestamp.

The dbt models are the one place the dataset rules live. For a point in time the
trainer asks dbt to compile them with the vars ``as_of`` and ``inline_datasets``:
every model then compiles to a CTE of one query instead of a view, so the query
reads only the app's tables and nothing is written to the database (the shared
views analysts read stay as they are).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timezone

from trainer.core.errors import ConfigurationError, DatasetError
from trainer.core.settings import Settings, project_root

TRAINING_EXAMPLES_QUERY = "select * from {{ ref('training_examples') }}"


def parse_as_of(value: str) -> datetime:
    """A UTC timestamp from ISO 8601 text ("2026-11-23", "2026-11-23T18:00:00Z",
    "…+00:00"), as a naive UTC datetime. Other offsets are converted."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ConfigurationError(
            f"as-of {value!r} is not an ISO 8601 timestamp (e.g. 2026-11-23 or 2026-11-23T18:00:00Z)"
        ) from None
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
        except OverflowError:
            raise ConfigurationError(f"as-of {value!r} lies outside the years 1-9999 in UTC") from None
    return parsed


def format_as_of(moment: datetime) -> str:
    """The dbt var's spelling of a naive UTC datetime (microseconds kept)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def training_examples_query(settings: Settings, as_of: datetime) -> str:
    """The SQL of ``training_examples`` as of ``as_of``, compiled by dbt."""
    from dbt.cli.main import dbtRunner

    from trainer.core.db import Database

    root = project_root()
    dbt_vars = f"{{as_of: '{format_as_of(as_of)}', inline_datasets: true, app_schema: '{settings.app_schema}'}}"
    with (
        tempfile.TemporaryDirectory(prefix="trainer-dbt-") as scratch,
        _profile_environment(settings),
        Database(settings).turn(),
    ):
        result = dbtRunner().invoke(
            [
                "compile",
                "--log-level",
                "none",
                "--project-dir",
                str(root),
                "--profiles-dir",
                str(root / "profiles"),
                "--target",
                settings.target,
                "--target-path",
                os.path.join(scratch, "target"),
                "--log-path",
                os.path.join(scratch, "logs"),
                "--vars",
                dbt_vars,
                "--inline",
                TRAINING_EXAMPLES_QUERY,
            ]
        )
    if not result.success or not result.result or not result.result.results:
        reason = result.exception or "see the messages above"
        raise DatasetError(f"dbt could not compile training_examples as of {format_as_of(as_of)}: {reason}")
    return result.result.results[0].node.compiled_code


@contextlib.contextmanager
def _profile_environment(settings: Settings):
    """Point dbt's profile (profiles/profiles.yml reads the environment) at the
    database these settings name, for the duration of the compile."""
    wanted = {"TRAINER_TARGET": settings.target, "TRAINER_DUCKDB_PATH": str(settings.duckdb_path)}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
