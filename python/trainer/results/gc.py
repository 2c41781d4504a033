"""Garbage in the blob store: artifacts and snapshots no row refers to.

What becomes garbage: the temporary files of a write that was killed, the model
directory of a run that failed after saving it (or was reaped), snapshots whose
runs were deleted. A file is kept when a row refers to it (a model version, a
run's artifact or snapshot), when it belongs to a run still queued or running,
or when it is younger than ``older_than`` seconds (a trainer may be between
writing it and recording it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from trainer.core.blob_store import ArtifactStore, StoredFile
from trainer.core.db import Database
from trainer.core.errors import ArtifactError
from trainer.core.settings import Settings
from trainer.data.snapshots import SNAPSHOTS_PREFIX
from trainer.results.store import ResultsStore

MODELS_PREFIX = "models"
# models/<model name>/run-<run id>-<random>/<file>
_RUN_DIRECTORY = re.compile(r"^models/[^/]+/run-(\d+)-[^/]+/")
DEFAULT_OLDER_THAN = 3600.0


@dataclass(frozen=True)
class Garbage:
    file: StoredFile
    reason: str


@dataclass
class GcReport:
    garbage: list[Garbage] = field(default_factory=list)
    kept: int = 0
    deleted: int = 0

    @property
    def garbage_bytes(self) -> int:
        return sum(item.file.size or 0 for item in self.garbage)


def collect_garbage(settings: Settings, delete: bool = False, older_than: float = DEFAULT_OLDER_THAN) -> GcReport:
    """List (and with ``delete``, remove) the store's files that no row refers to."""
    store = ResultsStore(Database(settings))
    artifacts = ArtifactStore(settings.artifacts_url)
    referenced = {artifacts.path_of(uri).rstrip("/") for uri in store.referenced_artifacts() if _inside(artifacts, uri)}
    active_runs = store.active_run_ids()
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than)

    report = GcReport()
    for stored in artifacts.list_files(MODELS_PREFIX) + artifacts.list_files(SNAPSHOTS_PREFIX):
        reason = _why_garbage(artifacts, stored, referenced, active_runs, cutoff)
        if reason is None:
            report.kept += 1
        else:
            report.garbage.append(Garbage(stored, reason))
    if delete:
        for item in report.garbage:
            artifacts.delete(item.file.uri)
            report.deleted += 1
    return report


def _why_garbage(
    artifacts: ArtifactStore, stored: StoredFile, referenced: set[str], active_runs: set[int], cutoff: datetime
) -> str | None:
    path = artifacts.path_of(stored.uri)
    # A file is referenced by its own URI or by a directory URI above it (a model artifact).
    if any(path == ref or path.startswith(ref + "/") for ref in referenced):
        return None
    run = _RUN_DIRECTORY.match(stored.relative_path)
    if run and int(run.group(1)) in active_runs:
        return None
    if stored.modified is not None and _aware(stored.modified) > cutoff:
        return None
    if ".partial-" in stored.relative_path.rsplit("/", 1)[-1]:
        return "partial write (its writer stopped before publishing it)"
    return "no row refers to it"


def _inside(artifacts: ArtifactStore, uri: str) -> bool:
    """Rows may point into another store (an older TRAINER_ARTIFACTS_URL): ignore those."""
    try:
        artifacts.path_of(uri)
        return True
    except ArtifactError:
        return False


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
