"""Label issues: the confident-learning rule (trainer/model/label_issues.py) against a worked
example, a plain restatement of its definition and injected label noise; and the table
``training.label_issues`` (migration 5) on both engines: its constraints, and
``succeed_run`` writing the issues with the run's metrics, all or nothing."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.model.label_issues import (
    THRESHOLD_FLOOR,
    LabelIssueCandidate,
    confident_thresholds,
    find_label_issues,
    label_issue_rows,
)
from trainer.results.store import MIGRATIONS, LabelIssue, Metric, ResultsStore, RunStateError

# -- the rule, by hand ------------------------------------------------------------

# Columns A, B, C, D (codes 0-3). Nobody is labelled D.
WORKED_LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2])
WORKED_PROBABILITIES = np.array(
    [
        #  A     B     C     D
        [0.90, 0.05, 0.05, 0.00],  # r0 A
        [0.80, 0.10, 0.00, 0.10],  # r1 A
        [0.10, 0.40, 0.50, 0.00],  # r2 A
        [0.10, 0.60, 0.30, 0.00],  # r3 B
        [0.70, 0.20, 0.10, 0.00],  # r4 B
        [0.20, 0.10, 0.40, 0.30],  # r5 C
        [0.60, 0.10, 0.20, 0.10],  # r6 C
        [0.05, 0.05, 0.25, 0.65],  # r7 C
    ]
)
# Thresholds, the mean probability of each class over the rows labelled with it:
#   t_A = (0.90 + 0.80 + 0.10) / 3 = 0.6      (in floats 0.6000000000000001)
#   t_B = (0.60 + 0.20) / 2        = 0.4
#   t_C = (0.40 + 0.20 + 0.25) / 3 = 0.2833…
#   t_D: none (no row labelled D), so no row is confidently D.
# Classes each row confidently belongs to (p >= t), and the verdict:
#   r0 A: {A .90}                   -> A, its label: fine
#   r1 A: {A .80}                   -> fine
#   r2 A: {B .40 (= t_B), C .50}    -> C, the larger: issue, p_given .10, suggests C .50
#   r3 B: {B .60, C .30}            -> B is its label and the largest: fine
#   r4 B: {A .70}                   -> issue, p_given .20, suggests A .70
#   r5 C: {C .40}                   -> fine
#   r6 C: {A .60 (= t_A)}           -> issue, p_given .20, suggests A .60
#   r7 C: {} (C .25 < t_C; D .65 has no threshold) -> not an issue, however unsure
# Ranked by p_given: r2 (.10), then r4 and r6 (.20 each) in row order.
WORKED_ISSUES = [
    LabelIssueCandidate(index=2, label_code=0, suggested_code=2, label_probability=0.1, suggested_probability=0.5, rank=1),
    LabelIssueCandidate(index=4, label_code=1, suggested_code=0, label_probability=0.2, suggested_probability=0.7, rank=2),
    LabelIssueCandidate(index=6, label_code=2, suggested_code=0, label_probability=0.2, suggested_probability=0.6, rank=3),
]


def test_the_worked_example():
    thresholds = confident_thresholds(WORKED_LABELS, WORKED_PROBABILITIES)
    assert thresholds[:3] == pytest.approx([0.6, 0.4, 0.85 / 3])
    assert thresholds[3] == np.inf
    assert find_label_issues(WORKED_LABELS, WORKED_PROBABILITIES, None) == WORKED_ISSUES


def test_the_limit_keeps_the_most_doubtful():
    assert find_label_issues(WORKED_LABELS, WORKED_PROBABILITIES, 2) == WORKED_ISSUES[:2]
    assert find_label_issues(WORKED_LABELS, WORKED_PROBABILITIES, 100) == WORKED_ISSUES
    assert find_label_issues(WORKED_LABELS, WORKED_PROBABILITIES, 0) == []
    with pytest.raises(ValueError, match="limit"):
        find_label_issues(WORKED_LABELS, WORKED_PROBABILITIES, -1)


def test_no_examples_and_a_single_class_have_no_issues():
    assert find_label_issues(np.array([], dtype=int), np.zeros((0, 3)), None) == []
    assert find_label_issues(np.array([]), np.array([]), None) == []
    assert find_label_issues(np.array([0, 0, 0]), np.array([[1.0], [0.2], [0.0]]), None) == []


def test_a_class_nobody_is_labelled_with_is_never_suggested():
    # Everyone's model says "C" with certainty, but nobody was labelled C.
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.0, 0.0, 1.0]] * 4)
    assert find_label_issues(labels, probabilities, None) == []


def test_a_class_the_model_never_gives_a_chance_is_never_suggested():
    # Every example labelled C got probability 0 for C (its fold's model never saw C):
    # t_C would be 0 and every example confidently C at probability 0, but the floor
    # keeps zero probabilities under every threshold.
    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.array([[0.9, 0.1, 0.0], [0.3, 0.7, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0], [0.6, 0.4, 0.0]])
    assert confident_thresholds(labels, probabilities)[2] == THRESHOLD_FLOOR
    # t_A = (0.9 + 0.3) / 2 = 0.6, t_B = (0.8 + 0.5) / 2 = 0.65. r4 (labelled C, A at
    # 0.6 = t_A) and r1 (labelled A, B at 0.7) are issues, r4 first (p_given 0 < 0.3).
    # r3 (A 0.5, B 0.5) reaches no threshold: without the floor it would be "confidently
    # C" at probability 0, and an issue.
    assert [(issue.index, issue.suggested_code) for issue in find_label_issues(labels, probabilities)] == [
        (4, 0), (1, 1)
    ]


def test_equal_probabilities_favour_the_given_label():
    # Both rows are confidently A and B alike: the model prefers neither, so no issue.
    labels = np.array([0, 1])
    probabilities = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert find_label_issues(labels, probabilities, None) == []


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    [
        (np.array([0, 2]), np.full((2, 2), 0.5), "label codes must index"),
        (np.array([-1, 0]), np.full((2, 2), 0.5), "label codes must index"),
        (np.array([0, 1]), np.full((3, 2), 0.5), "one row per label code"),
        (np.array([0.0, 1.0]), np.full((2, 2), 0.5), "integer codes"),
        (np.array([[0, 1]]), np.full((2, 2), 0.5), "one-dimensional"),
        (np.array([0, 1]), np.array([[0.5, 1.5], [0.5, 0.5]]), r"\[0, 1\]"),
        (np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), r"\[0, 1\]"),
    ],
)
def test_inconsistent_inputs_are_refused(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        find_label_issues(labels, probabilities, None)


# -- the rule, restated -----------------------------------------------------------


def restated(labels: list[int], numerators: list[list[int]], denominator: int, limit: int | None) -> list[tuple]:
    """The definition in plain Python with exact fractions: probabilities are
    numerator / denominator, so comparing numerators with exact means (floored) is
    comparing probabilities with thresholds."""
    k = len(numerators[0]) if numerators else 0
    thresholds = {}
    for j in range(k):
        mine = [row[j] for row, label in zip(numerators, labels) if label == j]
        if mine:
            thresholds[j] = max(Fraction(sum(mine), len(mine)), Fraction(THRESHOLD_FLOOR) * denominator)
    issues = []
    for index, (label, row) in enumerate(zip(labels, numerators)):
        confident = [j for j in thresholds if row[j] >= thresholds[j]]
        if not confident:
            continue
        top = max(row[j] for j in confident)
        if label in confident and row[label] == top:
            continue
        suggested = min(j for j in confident if row[j] == top)
        issues.append((row[label], index, label, suggested, top))
    issues.sort()
    return [
        (index, label, suggested, given, top, rank)
        for rank, (given, index, label, suggested, top) in enumerate(issues[:limit], start=1)
    ]


@st.composite
def labelled_probabilities(draw):
    k = draw(st.integers(1, 5))
    n = draw(st.integers(0, 30))
    # A coarse grid makes ties (at thresholds, between classes, in self-confidence)
    # common; a fine one makes everything else.
    denominator = draw(st.sampled_from([2, 4, 10, 1000]))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    numerators = draw(
        st.lists(st.lists(st.integers(0, denominator), min_size=k, max_size=k), min_size=n, max_size=n)
    )
    limit = draw(st.none() | st.integers(0, n + 1))
    return k, labels, numerators, denominator, limit


@settings(max_examples=400, deadline=None)
@given(labelled_probabilities())
def test_the_rule_matches_its_plain_restatement(case):
    k, labels, numerators, denominator, limit = case
    probabilities = np.array(numerators, dtype=np.float64).reshape(len(labels), k) / denominator
    found = find_label_issues(np.array(labels, dtype=np.int64), probabilities, limit)
    expected = restated(labels, numerators, denominator, limit)
    assert [
        (c.index, c.label_code, c.suggested_code, c.label_probability, c.suggested_probability, c.rank) for c in found
    ] == [(index, label, suggested, given / denominator, top / denominator, rank)
          for index, label, suggested, given, top, rank in expected]


# -- injected noise ---------------------------------------------------------------


def noisy_dataset(rng, n: int, k: int, flips: int, true_low: float, true_high: float, spread: float):
    """Probabilities of a model that knows the true labels (the true class gets
    between true_low and true_high, the rest goes to the others, Dirichlet(spread):
    below 1 it falls mostly on one other class, as between confusable labels), and
    the true labels with ``flips`` of them changed to another class."""
    truth = rng.integers(0, k, n)
    true_probability = rng.uniform(true_low, true_high, n)
    rest = rng.dirichlet(np.full(k - 1, spread), n) * (1 - true_probability)[:, None]
    probabilities = np.empty((n, k))
    for row in range(n):
        probabilities[row] = np.insert(rest[row], truth[row], true_probability[row])
    flipped = rng.choice(n, flips, replace=False)
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, k, flips)) % k
    return labels, probabilities, truth, set(flipped.tolist())


def test_flipped_labels_of_a_well_separated_model_are_exactly_the_issues_and_rank_first():
    rng = np.random.default_rng(20261123)
    labels, probabilities, truth, flipped = noisy_dataset(rng, 400, 4, 20, 0.9, 0.97, 1.0)
    issues = find_label_issues(labels, probabilities, None)
    assert {issue.index for issue in issues} == flipped
    assert {issue.index for issue in find_label_issues(labels, probabilities, len(flipped))} == flipped
    for issue in issues:
        assert issue.suggested_code == truth[issue.index] and issue.label_code == labels[issue.index]
    assert [issue.label_probability for issue in issues] == sorted(issue.label_probability for issue in issues)


def test_flipped_labels_of_an_unsure_model_lead_the_ranking():
    # True classes get 0.3-0.9 and the rest often lands on one confusable class: some
    # correct labels are flagged too, and flipped ones whose true class stays under its
    # threshold are not (the rule prefers missing an issue to crying wolf).
    rng = np.random.default_rng(7)
    labels, probabilities, _, flipped = noisy_dataset(rng, 600, 5, 30, 0.3, 0.9, 0.2)
    issues = find_label_issues(labels, probabilities, None)
    is_flipped = [issue.index in flipped for issue in issues]
    assert len(issues) > sum(is_flipped) >= len(flipped) / 3
    assert all(is_flipped[:10])
    # Nearly every flipped label found ranks above every correct one.
    first_correct = is_flipped.index(False)
    assert sum(is_flipped[first_correct:]) <= 2


def test_candidates_become_rows_with_the_examples_ids_and_labels():
    rows = label_issue_rows(
        WORKED_ISSUES[:2],
        classes=["answer", "header", "other", "question"],
        annotation_ids=[f"a{i}" for i in range(8)],
        document_ids=[f"d{i // 2}" for i in range(8)],
        splits=["train"] * 4 + ["eval"] * 4,
    )
    assert rows == [
        LabelIssue(1, "a2", "d1", "train", "answer", "other", 0.1, 0.5),
        LabelIssue(2, "a4", "d2", "eval", "header", "answer", 0.2, 0.7),
    ]


# -- the table, on both engines ---------------------------------------------------

COLUMNS = [
    "run_id", "rank", "annotation_id", "document_id", "split", "label", "suggested_label",
    "label_probability", "suggested_probability",
]


def migrated(workspace) -> ResultsStore:
    database = workspace.database()
    store = ResultsStore(database)
    with database.session(create=True) as session:
        store.migrate(session)
    return store


def running_run(store: ResultsStore, worker: str = "test-worker") -> int:
    return store.start_run("funsd", {"seed": 7}, worker)


def issues(count: int) -> list[LabelIssue]:
    return [
        LabelIssue(rank, f"a{rank:05d}", None if rank % 7 == 0 else f"d{rank % 13}", ("train", "eval")[rank % 2],
                   "question", "answer", 1 / (rank + 1), 1 - 1 / (rank + 2))
        for rank in range(1, count + 1)
    ]


METRICS = [Metric("eval", "accuracy", None, 0.8), Metric("eval", "support", "answer", 12.0)]


def test_migration_5_creates_the_table_on_a_fresh_database(workspace):
    database = workspace.database()
    store = ResultsStore(database)
    with database.session(create=True) as session:
        assert store.migrate(session) == [number for number, _, _ in MIGRATIONS]
    with database.session() as session:
        assert store.migrate(session) == []
        assert store.is_ready(session)
    columns = workspace.query(
        "select column_name, data_type, is_nullable from information_schema.columns "
        "where table_schema = 'training' and table_name = 'label_issues' order by ordinal_position"
    )
    assert [name for name, _, _ in columns] == COLUMNS
    same_type = {"BIGINT": "bigint", "INTEGER": "integer", "VARCHAR": "text", "DOUBLE": "double precision"}
    assert [same_type.get(data_type, data_type) for _, data_type, _ in columns] == [
        "bigint", "integer", "text", "text", "text", "text", "text", "double precision", "double precision"
    ]
    assert [nullable for name, _, nullable in columns if name == "document_id"] == ["YES"]
    assert {nullable for name, _, nullable in columns if name != "document_id"} == {"NO"}
    names = {name for (name,) in workspace.query(
        "select constraint_name from information_schema.table_constraints "
        "where table_schema = 'training' and table_name = 'label_issues'")}
    assert {"label_issues_run_id_rank_pkey", "label_issues_run_id_run_id_fkey", "label_issues_split_check",
            "label_issues_rank_check", "label_issues_suggested_label_label_check",
            "label_issues_label_probability_check", "label_issues_suggested_probability_check"} <= names


def test_migration_5_upgrades_a_database_at_migration_4(workspace):
    database = workspace.database()
    store = ResultsStore(database)
    all_migrations = list(MIGRATIONS)
    try:
        MIGRATIONS[:] = [migration for migration in all_migrations if migration[0] <= 4]
        with database.session(create=True) as session:
            assert store.migrate(session) == [1, 2, 3, 4]
        old_run = running_run(store)
    finally:
        MIGRATIONS[:] = all_migrations
    with database.session() as session:
        assert not store.is_ready(session)
        assert not session.relation_exists("training", "label_issues")
        assert store.migrate(session) == [5, 6, 7, 8]  # 6: the audit log's new columns; 7: model-name CHECKs on DuckDB; 8: proposals
    with database.session() as session:
        assert store.migrate(session) == []
        assert store.is_ready(session)
    # Runs from before the upgrade can succeed with issues.
    store.succeed_run(old_run, "test-worker", "funsd", "memory://m", "0" * 64, METRICS, label_issues=issues(2))
    assert store.run_label_issues(old_run) == issues(2)
    assert workspace.query("select version, name from training.schema_migrations where version = 5") == [
        (5, "label issues: accepted labels a run's model finds most unlikely")
    ]


# (constraint, the row's changed column and value, DuckDB's words for it: DuckDB
# reports the expression or the kind of constraint, PostgreSQL the constraint's name)
BAD_ROWS = [
    ("label_issues_rank_check", {"rank": 0}, "CHECK((rank >= 1))"),
    ("label_issues_split_check", {"split": "test"}, "CHECK((split IN ('train', 'eval')))"),
    ("label_issues_suggested_label_label_check", {"suggested_label": "question"}, 'CHECK((suggested_label != "label"))'),
    ("label_issues_label_probability_check", {"label_probability": 1.5}, "CHECK((label_probability BETWEEN 0 AND 1))"),
    ("label_issues_suggested_probability_check", {"suggested_probability": -0.1},
     "CHECK((suggested_probability BETWEEN 0 AND 1))"),
    ("label_issues_run_id_run_id_fkey", {"run_id": 999_999}, "foreign key"),
    ("label_issues_annotation_id_not_null", {"annotation_id": None}, "NOT NULL constraint failed: label_issues.annotation_id"),
    ("label_issues_run_id_rank_pkey", {"rank": 1}, "violates primary key constraint"),
]


@pytest.mark.parametrize(("constraint", "change", "duckdb_words"), BAD_ROWS, ids=[row[0] for row in BAD_ROWS])
def test_constraints_reject_bad_rows(workspace, constraint, change, duckdb_words):
    store = migrated(workspace)
    run_id = running_run(store)
    good = dict(zip(COLUMNS, (run_id, 1, "a1", "d1", "eval", "question", "answer", 0.1, 0.9)))
    insert = f"insert into training.label_issues ({', '.join(COLUMNS)}) values ({', '.join('?' for _ in COLUMNS)})"
    with store.database.session() as session:
        session.execute(insert, [*good.values()])
    bad = {**good, "rank": 2, **change}
    if constraint.endswith("_not_null") and workspace.target == "postgres":
        expected = 'null value in column "annotation_id"'  # PostgreSQL names the column, not a constraint
    else:
        expected = re.escape(constraint if workspace.target == "postgres" else duckdb_words)
    with pytest.raises(Exception, match=expected):
        with store.database.session() as session:
            session.execute(insert, [*bad.values()])
    assert workspace.query("select count(*) from training.label_issues") == [(1,)]


def test_succeed_run_writes_the_issues_and_they_read_back_by_rank(workspace):
    store = migrated(workspace)
    run_id = running_run(store)
    other = running_run(store, "other-worker")
    written = issues(1_200)  # more than one insert statement's chunk
    shuffled = [written[i] for i in np.random.default_rng(3).permutation(len(written))]
    store.succeed_run(run_id, "test-worker", "funsd", "memory://m1", "1" * 64, METRICS, label_issues=shuffled)
    store.succeed_run(other, "other-worker", "funsd", "memory://m2", "2" * 64, METRICS)
    assert store.run_label_issues(run_id) == written
    assert store.run_label_issues(run_id, limit=3) == written[:3]
    assert store.run_label_issues(run_id, limit=0) == []
    assert store.run_label_issues(other) == []
    assert store.run_label_issues(999_999) == []
    # NULL document ids and floats survive the round trip exactly.
    assert written[6].document_id is None and store.run_label_issues(run_id, limit=7)[6] == written[6]


def test_a_failing_issue_insert_writes_nothing_of_the_run(workspace):
    store = migrated(workspace)
    run_id = running_run(store)
    written = issues(1_100)
    # Rank 1 again, in the last chunk: the metrics and the first chunks are in by then.
    duplicate = [*written, LabelIssue(1, "a-dup", "d1", "eval", "question", "answer", 0.5, 0.5)]
    with pytest.raises(Exception, match="label_issues_run_id_rank_pkey|primary key constraint|PRIMARY KEY or UNIQUE constraint"):
        store.succeed_run(run_id, "test-worker", "funsd", "memory://m", "0" * 64, METRICS, label_issues=duplicate)
    assert workspace.query("select status, finished_at from training.training_runs where run_id = ?", [run_id]) == [
        ("running", None)
    ]
    for table in ("model_versions", "metrics", "label_issues"):
        assert workspace.query(f"select count(*) from training.{table}") == [(0,)], table
    # The run is still its worker's: it can succeed once the issues are right.
    version = store.succeed_run(run_id, "test-worker", "funsd", "memory://m", "0" * 64, METRICS, label_issues=written)
    assert version.version == 1
    assert len(store.run_label_issues(run_id)) == len(written)


def test_a_run_that_is_no_longer_the_workers_gets_no_issues(workspace):
    store = migrated(workspace)
    run_id = running_run(store)
    store.fail_run(run_id, "worker lost: test")
    with pytest.raises(RunStateError, match="was failed"):
        store.succeed_run(run_id, "test-worker", "funsd", "memory://m", "0" * 64, METRICS, label_issues=issues(3))
    assert workspace.query("select count(*) from training.label_issues") == [(0,)]


def test_the_user_guides_label_issue_query_runs_on_both_engines(workspace):
    guide = (Path(__file__).resolve().parent.parent / "docs" / "USER_GUIDE.md").read_text(encoding="utf-8")
    section = guide[guide.index("**`training.label_issues`**"):]
    start = section.index("```sql") + len("```sql")
    query = section[start: section.index("```", start)].strip().rstrip(";")
    from trainer.data.app_tables import create_app_tables

    store = migrated(workspace)
    with store.database.session() as session:
        create_app_tables(session, "app")
    run_id = store.start_run("segment-labeler", {}, "test-worker")
    store.succeed_run(run_id, "test-worker", "segment-labeler", "memory://m", "0" * 64, METRICS, label_issues=issues(60))
    rows = workspace.query(query)
    assert [row[0] for row in rows] == list(range(1, 51))
    assert rows[0][1:5] == ("a00001", "question", "answer", 0.5)
