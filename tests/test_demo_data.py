"""The bundled FUNSD forms, loaded as the annotation app would hold them."""

from __future__ import annotations

import csv
from importlib import resources

import pytest
from conftest import ENGINES, ROOT, new_workspace

from trainer.data.demo import build_demo_data, load_demo, read_segments


@pytest.fixture(scope="module", params=ENGINES)
def loaded(request, tmp_path_factory):
    space = new_workspace(tmp_path_factory.mktemp("demo"), request.param, request)
    report = load_demo(space.database())
    return space, report


def test_demo_data_is_bundled_with_attribution():
    folder = resources.files("trainer.data") / "demo_data" / "funsd"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "Jaume, Ekenel and Thiran" in readme
    assert "solely for" in readme and "non-commercial, research and educational purposes" in readme
    assert "../shared" not in (ROOT / "python" / "trainer" / "data" / "demo.py").read_text()


def test_texts_and_ids_are_exactly_the_source(loaded):
    space, _ = loaded
    source = {}
    with (resources.files("trainer.data") / "demo_data" / "funsd" / "segments.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            source[f"{row['doc_id']}-{row['segment_id']}"] = row["text"]
    stored = dict(space.query("select annotation_id, text from app.annotations"))
    assert stored and all(source[key] == text for key, text in stored.items())
    assert len(source) - len(stored) == space.query(
        "select count(distinct annotation_id) from app.annotation_events where event_type = 'deleted'")[0][0]
    assert space.query("select count(*) from app.documents")[0][0] == len({key.rsplit('-', 1)[0] for key in source})


def test_history_is_believable(loaded):
    space, _ = loaded
    q = lambda sql: space.query(sql)[0][0]  # noqa: E731
    assert q("select count(*) from app.annotation_events where event_type = 'created' and actor like 'user:%'") > 1000
    assert q("select count(*) from app.annotation_events where event_type = 'proposed' and actor like 'model:%@%'") > 500
    assert q("select count(*) from app.annotation_events where event_type = 'accepted' and actor like 'user:%'") > 3000
    # rejected and never accepted again
    assert q("select count(*) from (select annotation_id from app.annotation_events group by annotation_id "
             "having bool_or(event_type = 'rejected') and not bool_or(event_type = 'accepted')) as rejected") > 50
    # relabelled and accepted again: two acceptances with different labels
    assert q("select count(*) from (select annotation_id from app.annotation_events where event_type = 'accepted' "
             "group by annotation_id having count(distinct label) > 1) as relabelled") > 50
    # still pending: no decision at all
    assert q("select count(*) from (select annotation_id from app.annotation_events group by annotation_id "
             "having not bool_or(event_type in ('accepted', 'rejected', 'deleted'))) as pending") > 100
    # late arrivals: a greater event_id that happened earlier than another event of the same annotation
    assert q("select count(*) from app.annotation_events a join app.annotation_events b "
             "on a.annotation_id = b.annotation_id and a.event_id > b.event_id and a.occurred_at < b.occurred_at") > 20
    # edits after acceptance, events for deleted rows, soft-deleted documents, an unknown event type
    assert q("select count(*) from app.annotation_events e where event_type = 'edited' and exists (select 1 from "
             "app.annotation_events a where a.annotation_id = e.annotation_id and a.event_type = 'accepted' "
             "and a.occurred_at < e.occurred_at)") > 50
    assert q("select count(*) from app.annotation_events e where not exists "
             "(select 1 from app.annotations a where a.annotation_id = e.annotation_id)") > 50
    assert q("select count(*) from app.documents where deleted_at is not null") == 2
    assert q("select count(*) from app.annotation_events where event_type = 'commented'") > 50
    # every event id is unique, and ids follow arrival
    assert q("select count(*) - count(distinct event_id) from app.annotation_events") == 0


def test_loading_is_deterministic_and_idempotent(loaded):
    space, first = loaded
    assert first.inserted == {"documents": first.documents, "annotations": first.annotations,
                              "annotation_events": first.annotation_events}
    again = load_demo(space.database())
    assert again.inserted == {"documents": 0, "annotations": 0, "annotation_events": 0}
    one, two = build_demo_data(read_segments()), build_demo_data(read_segments())
    assert one.annotation_events.equals(two.annotation_events) and one.annotations.equals(two.annotations)


@pytest.mark.parametrize("loaded", ["postgres"], indirect=True)  # DuckDB keeps statistics as it writes
def test_a_load_leaves_statistics_for_the_planner(loaded):
    """On PostgreSQL the demo's tables are analyzed as they are loaded: the review
    loop's views plan by them (docs/USER_GUIDE.md, Dirty data)."""
    space, _ = loaded
    analyzed = space.query(
        "select relname from pg_stat_user_tables where schemaname = 'app' and last_analyze is not null"
    )
    assert sorted(name for (name,) in analyzed) == ["annotation_events", "annotations", "documents"]


def test_boxes_are_in_points_with_origin_top_left(loaded):
    """Pixels of ~754 x 1000 scans become points of a 792-pt-high page: x 0.792."""
    space, _ = loaded
    source = {}
    with (resources.files("trainer.data") / "demo_data" / "funsd" / "segments.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            source[f"{row['doc_id']}-{row['segment_id']}"] = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
    for annotation_id, *box in space.query("select annotation_id, x0, y0, x1, y1 from app.annotations"):
        assert box == pytest.approx([value * 0.792 for value in source[annotation_id]], abs=0.006)
    y_max, inverted = space.query("select max(y1), count(*) filter (where x1 < x0 or y1 < y0) from app.annotations")[0]
    assert y_max <= 792 and inverted == 0
