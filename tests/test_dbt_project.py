"""`dbt build` on real DuckDB files: clean, empty and dirty app data."""

from __future__ import annotations

import json

from conftest import ROOT, demo_subset, load_app_data
from test_dataset_rules import PLAIN_APP_TABLES, register_model_versions

DIRTY_ROWS = """
insert into app.documents values
    ('d1', 'd1.pdf', null, 1, '2026-01-01', null),
    ('d1', 'd1-copy.pdf', null, 1, '2026-01-01', null),      -- duplicated key
    ('d2', null, null, null, null, null),                    -- nulls in not-null columns
    (null, 'orphan.pdf', null, 1, '2026-01-01', null),
    ('gone', 'gone.pdf', null, 1, '2026-01-01', '2026-02-01');
insert into app.annotations values
    ('a1', 'd1', 1, 0, 0, 1, 1, 'Name:', 'question', 'accepted', '2026-01-01', '2026-01-01'),
    ('a2', 'd2', null, null, null, null, null, 'Date:', null, 'weird', null, null),
    ('a2', 'd2', 1, null, null, null, null, 'Date: (copy)', null, 'pending', null, null),
    ('a3', 'missing', 1, null, null, null, null, 'x', null, 'pending', null, null),
    ('a4', null, 1, null, null, null, null, null, null, 'pending', null, null),
    ('a5', 'd2', 1, 1e300, -1e300, 0, 0, ' ', 'other', 'accepted', '2026-01-01', '2026-01-01'),
    ('a6', 'd2', 1, 2, 3, 4, 5, 'Total', null, 'pending', '2026-01-01', '2026-01-01'),  -- live, never decided
    (null, 'd2', 1, null, null, null, null, 'no id', null, 'pending', null, null);
insert into app.annotation_events values
    (1, 'a1', 'accepted', 'question', 'user:r', '2026-01-02', null),
    (1, 'a1', 'rejected', null, 'user:r', '2026-01-02', 'duplicate id'),
    (2, 'a2', 'ACCEPTED', 'answer', 'user:r', '2026-01-02', null),
    (3, 'a5', 'accepted', 'other', null, '2026-01-02', null),
    (4, 'ghost', 'accepted', 'other', 'user:r', '2026-01-02', null),
    (null, 'a1', 'accepted', 'header', 'user:r', '2026-01-03', null),
    (5, null, 'ACCEPTED', 'header', 'user:r', '2026-01-03', null),
    (6, 'a1', null, 'header', 'user:r', null, null);
"""
# training.proposals of the model versions register_model_versions makes (ids 1, 2, 5, 12).
PROPOSALS = """
insert into training.proposals (model_version_id, annotation_id, actor, label, confidence, margin, created_at) values
    (1, 'a6', 'model:m@1', 'question', 0.5, 0.25, '2026-01-03'),
    (12, 'a6', 'model:m@4', 'answer', 0.75, 0.5, '2026-01-02'),   -- the newest version: shown
    (5, 'a1', 'model:m@3', 'other', 0.25, 0.0, '2026-01-02'),     -- a1 is decided: not queued
    (5, 'ghost', 'model:m@3', 'other', 0.25, 0.0, '2026-01-02');  -- no such annotation
"""


DBT_UNIT_TESTS = sorted(
    [("dataset_summary", "dataset_summary_counts_examples_and_documents")]
    + [
        ("int_annotation_decisions", name)
        for name in (
            "as_of_ignores_events_after_it",
            "deletion_decides",
            "edit_after_acceptance_does_not_decide",
            "equal_timestamps_are_broken_by_the_greater_event_id",
            "events_that_cannot_be_ordered_are_ignored",
            "exact_duplicates_let_doubt_win",
            "late_arriving_event_is_placed_by_time_not_by_id",
            "rejection_after_acceptance_decides",
            "unknown_and_differently_cased_event_types_are_ignored",
        )
    ]
    + [
        ("latest_accepted_annotations", name)
        for name in (
            "accepted_label_and_text_train_exactly_as_stored",
            "annotations_of_missing_documents_do_not_train",
            "blank_or_null_labels_do_not_train",
            "blank_text_does_not_train",
            "deleted_documents_do_not_train",
            "documents_deleted_after_as_of_were_live_then",
            "duplicated_keys_in_the_source_do_not_train",
            "events_for_missing_annotations_do_not_train",
            "only_an_acceptance_trains",
        )
    ]
    + [
        ("training_examples", name)
        for name in (
            "split_follows_the_md5_bucket_of_the_document",
            "split_overrides_pin_documents_whatever_their_hash",
            "split_salt_and_eval_percent_are_vars",
        )
    ]
    # CONTRACT §7, the review loop.
    + [("int_annotation_changes", "latest_change_is_placed_by_time_then_event_id")]
    + [
        ("int_proposal_answers", name)
        for name in (
            "a_later_proposal_supersedes_even_a_persons",
            "a_proposal_is_answered_by_the_first_decision_after_it",
            "only_model_proposals_of_existing_annotations_count",
        )
    ]
    + [("live_segments", "review_state_follows_the_latest_change_and_the_decision")]
    + [("proposal_outcomes", "outcomes_follow_the_contracts_order_and_labels_compare_exactly")]
    + [("proposal_acceptance", "acceptance_counts_outcomes_per_actor_and_label")]
    + [
        ("review_queue", name)
        for name in (
            "an_actor_without_an_at_sign_has_no_version",
            "current_label_is_the_latest_changes_label",
            "least_confident_segments_are_reviewed_first",
            "only_pending_live_segments_are_queued",
            "segments_without_a_proposal_are_reviewed_last",
            "the_newest_model_versions_proposal_is_shown",
            "ties_are_broken_by_document_then_reading_order",
        )
    ]
    + [("review_queue_documents", "documents_are_opened_most_uncertain_first")]
)
# The relations of CONTRACT §4 and §7 (views in `datasets`).
MARTS = (
    "latest_accepted_annotations", "training_examples", "dataset_summary", "live_segments", "proposal_outcomes",
    "proposal_acceptance", "review_queue", "review_queue_documents",
)

def results_by_status(workspace) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for result in workspace.run_results():
        grouped.setdefault(result["status"], []).append(result["unique_id"])
    return grouped


def test_build_succeeds_on_dirty_data_and_warns_about_it(workspace):
    workspace.execute_script(PLAIN_APP_TABLES + DIRTY_ROWS)
    # The results tables, with proposals: the review queue's tests run on rows too.
    register_model_versions(workspace)
    workspace.execute_script(PROPOSALS)

    result = workspace.dbt("build")
    statuses = results_by_status(workspace)

    assert result.returncode == 0
    assert "error" not in statuses and "fail" not in statuses
    warned = statuses["warn"]
    # Every warning comes from a test on the app's tables, never from the marts.
    assert all(".source_" in unique_id for unique_id in warned), warned
    for expected in ("unique_app_documents_document_id", "accepted_values_app_annotation_events_event_type",
                     "relationships_app_annotation_events_annotation_id", "not_null_app_annotation_events_occurred_at"):
        assert any(expected in unique_id for unique_id in warned), expected
    # The unknown event type is counted per event, not per distinct spelling.
    event_type_test = next(r for r in workspace.run_results() if "accepted_values_app_annotation_events_event_type" in r["unique_id"])
    assert event_type_test["failures"] == 2  # two 'ACCEPTED' events (a null type is not_null's to count)

    rows = workspace.query("select annotation_id, label from datasets.training_examples")
    assert rows == []  # a1 is rejected on the exact tie, a2 and a5 are ambiguous or blank, the rest orphans
    queue = workspace.query(
        "select annotation_id, document_id, model_version_id, proposed_label, confidence, model_name, version, "
        "priority from datasets.review_queue"
    )
    assert queue == [("a6", "d2", 12, "answer", 0.75, "m", "4", 1)]
    documents = workspace.query("select * from datasets.review_queue_documents")
    assert documents == [("d2", 1, 1, 0.25, 0.75, 1)]


def test_build_succeeds_on_empty_tables(workspace):
    workspace.execute_script(PLAIN_APP_TABLES)
    workspace.dbt("build")
    assert results_by_status(workspace).keys() == {"success", "pass"}
    for relation in MARTS:
        assert workspace.query(f"select count(*) from datasets.{relation}") == [(0,)]


def test_relations_are_views_in_the_datasets_schema_without_prefix(workspace):
    load_app_data(workspace.database(), demo_subset(6))
    workspace.dbt("build")
    models = {
        "stg_app__documents", "stg_app__annotations", "stg_app__annotation_events", "stg_training__split_overrides",
        "stg_training__proposals", "int_annotation_decisions", "int_annotation_changes", "int_proposal_answers",
        *MARTS,
    }
    views = {(schema, name) for schema, name in workspace.query(
        "select table_schema, table_name from information_schema.views") if name in models}
    assert views == {("datasets", name) for name in models}


def test_mart_key_tests_error_and_app_table_tests_warn(duckdb_workspace):
    workspace = duckdb_workspace
    workspace.dbt("parse")
    manifest = json.loads((workspace.root / "dbt-target" / "manifest.json").read_text())
    tests = [node for node in manifest["nodes"].values() if node["resource_type"] == "test"]
    on_sources = [t for t in tests if any(dep.startswith("source.") for dep in t["depends_on"]["nodes"])]
    on_marts = [
        t for t in tests
        if any(dep.split(".")[-1] in MARTS for dep in t["depends_on"]["nodes"])
    ]
    assert on_sources and on_marts
    assert {t["config"]["severity"].lower() for t in on_sources} == {"warn"}
    assert {t["config"]["severity"].lower() for t in on_marts} == {"error"}
    names = {t["name"] for t in on_marts}
    assert "unique_training_examples_annotation_id" in names
    assert any(name.startswith("one_split_per_document_training_examples") for name in names)
    # By name, not by count: a unit test deleted or renamed must be a visible change here.
    unit_tests = sorted((node["model"], node["name"]) for node in manifest["unit_tests"].values())
    assert unit_tests == DBT_UNIT_TESTS


def test_split_disjointness_test_fails_when_a_document_straddles(workspace):
    """The generic test is real: fed a relation with a straddling document, it fails."""
    workspace.execute_script(PLAIN_APP_TABLES)
    workspace.dbt("run")
    workspace.execute_script(
        "drop view datasets.dataset_summary; drop view datasets.training_examples; "
        "create view datasets.training_examples as "
        "select * from (values ('a1', 'd1', 'train'), ('a2', 'd1', 'eval')) as t(annotation_id, document_id, split)"
    )
    result = workspace.dbt("test", "--select", "test_name:one_split_per_document", check=False)
    assert result.returncode == 1
    assert [r["status"] for r in workspace.run_results()] == ["fail"]


def test_eval_percent_must_be_an_integer_percentage(duckdb_workspace):
    workspace = duckdb_workspace
    workspace.execute_script(PLAIN_APP_TABLES)
    for bad in ("101", "-1", "12.5", "twenty"):
        result = workspace.dbt("run", dbt_vars={"eval_percent": bad}, check=False)
        assert result.returncode != 0
        assert "eval_percent must be an integer from 0 to 100" in result.stdout


def test_the_build_reads_the_app_schema_var_or_environment(workspace):
    workspace.execute_script(
        PLAIN_APP_TABLES.replace("app.", "tenant_7.").replace("schema if not exists app", "schema if not exists tenant_7")
        + "insert into tenant_7.documents values ('d1', 'd1.pdf', null, 1, '2026-01-01', null);"
        "insert into tenant_7.annotations values "
        "('a1', 'd1', 1, null, null, null, null, 'Name:', null, 'pending', '2026-01-01', '2026-01-01');"
        "insert into tenant_7.annotation_events values (1, 'a1', 'accepted', 'question', 'user:r', '2026-01-02', null);"
    )
    workspace.dbt("run", dbt_vars={"app_schema": "tenant_7"})
    assert workspace.query("select annotation_id, label from datasets.training_examples") == [("a1", "question")]
    # The same schema through the environment, as the trainer's --app-schema sees it.
    workspace.dbt("run", TRAINER_APP_SCHEMA="tenant_7")
    assert workspace.query("select annotation_id, label from datasets.training_examples") == [("a1", "question")]


def test_profiles_take_every_setting_from_the_environment():
    text = (ROOT / "profiles" / "profiles.yml").read_text()
    for variable in ("TRAINER_TARGET", "TRAINER_DUCKDB_PATH", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        assert f"env_var('{variable}'" in text
    assert "password: \"{{ env_var('PGPASSWORD', '') }}\"" in text  # no default secret
