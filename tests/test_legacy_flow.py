"""The legacy CSV flow behind `train --from-csv`, end to end on both engines:
the same annotations through the database and through the old export give the
same examples and fingerprint; a bad file fails the run and writes nothing else."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import Workspace, prepared_workspace

from trainer.data.dataset import dataset_fingerprint, read_training_examples

pytestmark = pytest.mark.slow

LEGACY_HEADER = ["annotation_id", "document_id", "page", "text", "label", "status"]


@pytest.fixture
def demo(workspace) -> Workspace:
    return prepared_workspace(workspace, 10)


def export_legacy_csv(space: Workspace, path) -> int:
    """Write the app's annotations in the old export format: the accepted ones
    with their accepted label, every other one pending or rejected."""
    rows = space.query(
        """
        select a.annotation_id, a.document_id, a.page, a.text,
               coalesce(e.label, a.label),
               case when e.annotation_id is not null then 'accepted'
                    when a.status = 'accepted' then 'rejected'
                    else a.status end
        from app.annotations as a
        left join datasets.training_examples as e on e.annotation_id = a.annotation_id
        order by a.annotation_id
        """
    )
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LEGACY_HEADER)
        writer.writerows(["" if value is None else value for value in row] for row in rows)
    return len(rows)


def counts(space: Workspace) -> dict[str, int]:
    return {
        table: space.query(f"select count(*) from training.{table}")[0][0]
        for table in ("training_runs", "model_versions", "metrics")
    }


def test_the_legacy_export_trains_the_same_examples_as_the_database(demo, tmp_path):
    exported = tmp_path / "export.csv"
    assert export_legacy_csv(demo, exported) > 100
    with demo.database().session() as session:
        database_fingerprint = dataset_fingerprint(read_training_examples(session))

    # Which examples the run reads is under test, not the model: the char n-gram text model alone is quick.
    quick = ("--no-embedding", "--no-layout", "--no-neighbours", "--no-label-issues")
    result = demo.trainer("train", "--from-csv", str(exported), "--quiet", *quick)
    assert result.returncode == 0, result.stderr
    run_id, status, params, fingerprint, n_train, n_eval = demo.query(
        "select run_id, status, params, dataset_fingerprint, train_examples, eval_examples from training.training_runs"
    )[0]
    assert status == "succeeded"
    assert fingerprint == database_fingerprint
    assert (n_train, n_eval) == tuple(
        demo.query(f"select count(*) from datasets.training_examples where split = '{side}'")[0][0] for side in ("train", "eval")
    )
    params = json.loads(params)
    import hashlib

    assert params["source"] == "csv"
    assert params["csv_sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    names = {row[0] for row in demo.query("select distinct name from training.metrics where run_id = ?", (run_id,))}
    assert {"accuracy", "macro_f1", "coverage", "selective_accuracy", "precision", "recall", "f1", "support"} <= names
    assert demo.query("select version from training.model_versions where run_id = ?", (run_id,)) == [(1,)]


BAD_FILES = {
    "missing column": (b"annotation_id,document_id,page,text,label\na1,d1,1,Name:,question\n", "line 1: missing required column(s) status"),
    "bad encoding": (b"annotation_id,document_id,page,text,label,status\na1,d1,1,Caf\xe9,question,accepted\n", "line 2, column 12: not valid UTF-8 (byte 0xe9)"),
    "ragged row": (b"annotation_id,document_id,page,text,label,status\na1,d1,1,Name:,question\n", "line 2: 5 fields where the header has 6"),
    "NUL byte": (b"annotation_id,document_id,page,text,label,status\na1,d1,1,Na\x00me,question,accepted\n", "line 2, column 11: NUL byte"),
    "unknown status": (
        b"annotation_id,document_id,page,text,label,status\na1,d1,1,Name:,question,accepted\na2,d1,1,Date:,question,done\n",
        "line 3, column 6: unknown status 'done'",
    ),
}


def test_a_bad_legacy_file_fails_the_run_and_writes_nothing_else(demo, tmp_path):
    for case, (content, message) in BAD_FILES.items():
        path = tmp_path / f"{case.replace(' ', '-')}.csv"
        path.write_bytes(content)
        before = counts(demo)
        result = demo.trainer("train", "--from-csv", str(path), "--quiet")
        assert result.returncode == 1, case
        error_lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(error_lines) == 1, (case, result.stderr)
        assert f"{path}: {message}" in error_lines[0], (case, error_lines[0])
        after = counts(demo)
        assert after == {**before, "training_runs": before["training_runs"] + 1}, case
        status, error = demo.query("select status, error from training.training_runs order by run_id desc limit 1")[0]
        assert status == "failed" and message in error, case
    assert not (demo.artifacts / "snapshots").exists()
    assert not (demo.artifacts / "models").exists()
