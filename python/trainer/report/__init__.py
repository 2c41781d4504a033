"""A report per training run: one HTML page with PNG plots, stored with the run's model.

``python -m trainer report RUN_ID`` reads the run (it must have succeeded), its
metric rows, its label issues and the eval predictions in its artifact, draws the
plots with matplotlib (Agg, no display) and writes, atomically, into the run's
artifact directory in the blob store::

    models/<model>/run-<id>-<random>/report/index.html   the page, PNGs inlined (self-contained)
    models/<model>/run-<id>-<random>/report/<plot>.png   each plot on its own

``index.html`` is written last, so a complete page means complete plots. The page
needs no network and no script, so it opens from S3, a mail or a file share
alike. ``gc`` keeps it: it lies under the run's referenced artifact directory.
The model's own manifest does not list it, so model archives are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from trainer.core.blob_store import ArtifactStore
from trainer.core.errors import ConfigurationError, InputFileError
from trainer.core.settings import Settings
from trainer.report.data import LABEL_ISSUES_SHOWN, PREDICTIONS_FILE, load_report_data
from trainer.report.page import render_page
from trainer.report.plots import Plot, all_plots
from trainer.results.export import write_local_file

REPORT_DIRECTORY = "report"
INDEX = "index.html"
DEFAULT_TOP = 20

__all__ = ["DEFAULT_TOP", "INDEX", "LABEL_ISSUES_SHOWN", "PREDICTIONS_FILE", "ReportResult", "write_report"]


@dataclass(frozen=True)
class ReportResult:
    run_id: int
    uri: str  # the page in the blob store
    local_path: Path | None  # that page on this machine's disk when the store is local, else None
    output: Path | None  # the local copy asked for with ``output``, else None
    files: tuple[str, ...]  # every stored file: the PNGs, then the page


def write_report(settings: Settings, run_id: int, output: Path | None = None, top: int = DEFAULT_TOP) -> ReportResult:
    """Write the report of run ``run_id`` into its artifact directory (``report/``).

    ``top`` is how many of the most confidently wrong eval examples the page lists.
    With ``output`` a local copy is written too: to that file when it ends in
    ``.html`` or ``.htm``, else into that directory (created when missing) as
    ``index.html`` with the PNGs beside it.

    Raises NotFound for a run that does not exist and RunStateError for one that
    did not succeed (one line each: the CLI prints them as they are).
    """
    if top < 0:
        raise ConfigurationError(f"--top must be at least 0, not {top}")
    artifacts = ArtifactStore(settings.artifacts_url)
    data = load_report_data(settings, run_id, artifacts, top)
    plots = all_plots(data)
    page = render_page(data, plots, _generator()).encode("utf-8")
    directory = f"{artifacts.relative_path(data.run.artifact_uri)}/{REPORT_DIRECTORY}"
    stored = [artifacts.write_bytes(f"{directory}/{plot.filename}", plot.png)[0] for plot in plots]
    # The page last: when it is there, so is every plot it names.
    index_uri = artifacts.write_bytes(f"{directory}/{INDEX}", page)[0]
    stored.append(index_uri)
    local_path = Path(artifacts.path_of(index_uri)) if artifacts.is_local else None
    copy = _write_copy(Path(output), page, plots) if output is not None else None
    return ReportResult(run_id, index_uri, local_path, copy, tuple(stored))


def _generator() -> str:
    try:
        return f"training-db-pipeline {metadata.version('training-db-pipeline')}"
    except metadata.PackageNotFoundError:
        return "training-db-pipeline"


def _write_copy(output: Path, page: bytes, plots: list[Plot]) -> Path:
    if output.suffix.lower() in (".html", ".htm"):
        _write_local(output, page)
        return output
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{output}: cannot create the directory: {exc.strerror or exc}") from exc
    for plot in plots:
        _write_local(output / plot.filename, plot.png)
    _write_local(output / INDEX, page)
    return output / INDEX


def _write_local(path: Path, data: bytes) -> None:
    """Write a local file whole or not at all (a reader never sees half a page)."""
    write_local_file(path, [data])
