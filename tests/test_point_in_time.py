"""Point-in-time datasets (dbt var `as_of`, `train --as-of`) and pinned split
overrides (`training.split_overrides`), on both engines with real dbt views."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from conftest import Workspace, prepared_workspace

from trainer.core.errors import ConfigurationError
from trainer.data.dataset import dataset_fingerprint, read_training_examples
from trainer.data.point_in_time import parse_as_of, training_examples_query


@pytest.fixture
def demo(workspace) -> Workspace:
    return prepared_workspace(workspace, 10)


def examples(space: Workspace, as_of: datetime | None = None):
    query = None if as_of is None else training_examples_query(space.settings(), as_of)
    with space.database().session() as session:
        return read_training_examples(session, query)


def rows(table) -> list[tuple]:
    return sorted(zip(*(table.column(name).to_pylist() for name in table.column_names)))


def test_a_dataset_as_of_yesterday_does_not_change_when_todays_events_arrive(demo):
    now = datetime(2026, 11, 24, 9, 0, 0)
    yesterday = now - timedelta(days=1)
    before_live = examples(demo)
    before = examples(demo, yesterday)
    # Every demo event is older than yesterday: as of yesterday is the live dataset.
    assert rows(before) == rows(before_live)

    accepted = [row[0] for row in demo.query("select annotation_id from datasets.training_examples order by annotation_id")]
    pending = [
        row[0]
        for row in demo.query(
            "select annotation_id from app.annotations where annotation_id not in "
            "(select annotation_id from datasets.training_examples) order by annotation_id"
        )
    ]
    document = demo.query("select min(document_id) from datasets.training_examples")[0][0]
    next_id = demo.query("select max(event_id) from app.annotation_events")[0][0] + 1
    today = now.strftime("%Y-%m-%d %H:%M:%S")
    demo.execute_script(
        f"""
        insert into app.annotation_events (event_id, annotation_id, event_type, label, actor, occurred_at) values
            ({next_id}, '{accepted[0]}', 'rejected', null, 'user:late', timestamp '{today}'),
            ({next_id + 1}, '{accepted[1]}', 'accepted', 'relabelled', 'user:late', timestamp '{today}'),
            ({next_id + 2}, '{pending[0]}', 'accepted', 'answer', 'user:late', timestamp '{today}');
        update app.documents set deleted_at = timestamp '{today}' where document_id = '{document}';
        """
    )
    after_live = examples(demo)
    after = examples(demo, yesterday)
    assert rows(after_live) != rows(before_live), "today's events must change the live view"
    assert rows(after) == rows(before)
    assert dataset_fingerprint(after) == dataset_fingerprint(before)
    # As of now, today's events count again.
    assert rows(examples(demo, now)) == rows(after_live)


def test_as_of_an_earlier_moment_leaves_out_later_decisions(demo):
    decided = demo.query(
        "select annotation_id, accepted_at from datasets.training_examples order by accepted_at, annotation_id"
    )
    middle = decided[len(decided) // 2][1]
    table = examples(demo, middle)
    kept = set(table.column("annotation_id").to_pylist())
    assert kept and len(kept) < len(decided)
    assert all(accepted_at <= middle for accepted_at in table.column("accepted_at").to_pylist())
    # A live example whose deciding acceptance is no later than `middle` was
    # already decided that way then: it is there, unchanged.
    live = examples(demo)
    earlier = [row for row in rows(live) if row[live.column_names.index("accepted_at")] <= middle]
    assert set(earlier) <= set(rows(table))


def test_train_as_of_records_it(demo):
    # What the run records is under test, not the model: the char n-gram text model alone is quick.
    quick = ("--no-embedding", "--no-layout", "--no-neighbours", "--no-label-issues")
    result = demo.trainer("train", "--as-of", "2026-11-23T00:00:00Z", "--quiet", *quick)
    assert result.returncode == 0, result.stderr
    params, as_of = demo.query("select params, dataset_as_of from training.training_runs")[0]
    assert json.loads(params)["as_of"] == "2026-11-23T00:00:00"
    assert as_of == datetime(2026, 11, 23)
    shown = json.loads(demo.trainer("show", "run", "1", "--json").stdout)
    assert shown["dataset"]["as_of"] == "2026-11-23T00:00:00"


def test_dbt_builds_the_views_as_of_a_moment(demo):
    demo.dbt("run", dbt_vars={"as_of": "2026-01-01"})
    assert demo.query("select count(*) from datasets.training_examples")[0][0] == 0
    demo.dbt("run")
    assert demo.query("select count(*) from datasets.training_examples")[0][0] > 0
    bad = demo.dbt("run", dbt_vars={"as_of": "yesterday"}, check=False)
    assert bad.returncode != 0 and "var as_of must be a UTC timestamp" in bad.stdout


def test_as_of_is_parsed_as_utc():
    assert parse_as_of("2026-11-23") == datetime(2026, 11, 23)
    assert parse_as_of("2026-11-23T18:00:00Z") == datetime(2026, 11, 23, 18)
    assert parse_as_of("2026-11-23T20:00:00+02:00") == datetime(2026, 11, 23, 18)
    with pytest.raises(ConfigurationError, match="not an ISO 8601 timestamp"):
        parse_as_of("23/11/2026")


def test_split_overrides_pin_documents_and_change_the_fingerprint(demo):
    baseline = examples(demo)
    sides = dict(demo.query("select distinct document_id, split from datasets.training_examples"))
    to_eval = min(doc for doc, side in sides.items() if side == "train")
    to_train = min(doc for doc, side in sides.items() if side == "eval")
    demo.execute_script(
        f"insert into training.split_overrides (document_id, split, note) values "
        f"('{to_eval}', 'eval', 'gold set'), ('{to_train}', 'train', null), ('not-a-document', 'eval', null)"
    )
    pinned = examples(demo)
    moved = dict(zip(pinned.column("document_id").to_pylist(), pinned.column("split").to_pylist()))
    assert moved[to_eval] == "eval" and moved[to_train] == "train"
    assert {doc: side for doc, side in moved.items() if doc not in (to_eval, to_train)} == {
        doc: side for doc, side in sides.items() if doc not in (to_eval, to_train)
    }
    assert dataset_fingerprint(pinned) != dataset_fingerprint(baseline)
    demo.execute_script("delete from training.split_overrides")
    assert dataset_fingerprint(examples(demo)) == dataset_fingerprint(baseline)


def test_the_table_refuses_a_split_other_than_train_or_eval(demo):
    with pytest.raises(Exception, match="split_overrides_split_check|CHECK constraint"):
        demo.execute_script("insert into training.split_overrides (document_id, split) values ('d', 'gold')")
