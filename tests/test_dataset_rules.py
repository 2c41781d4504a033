"""The dataset views against an independent reading of CONTRACT §2–3 and §7.

dbt builds the views once per configuration; each generated app state (with the
model versions' proposals in training.proposals) then replaces the app's tables
and the live views are compared, row by row and column by column, with
tests/reference.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from conftest import ENGINES, Workspace, built_once, new_workspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    Annotation,
    Document,
    Event,
    Proposal,
    dataset_summary,
    live_segments,
    proposal_acceptance,
    proposal_outcomes,
    review_queue,
    review_queue_documents,
    training_examples,
)

from trainer.data.dataset import EXAMPLE_COLUMNS

PLAIN_APP_TABLES = """
create schema if not exists app;
create table app.documents (document_id text, filename text, sha256 text, page_count integer,
    created_at timestamp, deleted_at timestamp);
create table app.annotations (annotation_id text, document_id text, page integer,
    x0 double precision, y0 double precision, x1 double precision, y1 double precision,
    text text, label text, status text,
    created_at timestamp, updated_at timestamp);
create table app.annotation_events (event_id bigint, annotation_id text, event_type text, label text,
    actor text, occurred_at timestamp, note text);
"""
# No keys and no NOT NULL: a dirty app database may hold anything of the contract's types.

# doc-63 and doc-52 sit in buckets 19 and 20 (the default boundary); with the salt
# "gold'26", doc-153 and doc-270 sit in buckets 49 and 50 (that configuration's boundary).
DOCUMENT_IDS = ["d1", "doc-63", "doc-52", "doc-153", "doc-270", "Ω文書", "d 5", "données-é"]
ANNOTATION_IDS = ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"]
TIMES = [datetime(2026, 3, 1, 10, 0, 0) + timedelta(minutes=k) for k in range(3)]
GOOD_LABELS = ["question", "Question", " answer ", "header", "\u00a0", "\u3000", "ラベル"]
BLANK_LABELS = ["", " ", "\t\n", "\r", "\f", "\v", " \t\n\r\f\v"]
GOOD_TEXTS = ["Name:", " Date: ", "\u00a0", "日本語", "RTL עברית", "emoji 🙂", 'a "quoted", text\n', "x" * 300]
BLANK_TEXTS = ["", " ", "\t\n\r\f\v", "\v", None]
DECISION_TYPES = ["accepted", "rejected", "deleted"]
OTHER_TYPES = ["created", "proposed", "edited", "ACCEPTED", "Accepted", "Rejected", "approved", "Proposed", None]
# People, and models named every way CONTRACT §7.2 reads: a version after the last `@`,
# an `@` in the name, no version at all, and a prefix that is not quite `model:`.
ACTORS = ["user:a", "user:b", "model:m@1", "model:m@2", "model:team@eu@3", "model:plain", "Model:m@1", None]
# training.proposals (CONTRACT §7.3). The model versions build_views registers: 12 is the
# newest, also as a number against 5 (not as text). Confidences are exact in binary, so
# the means of review_queue_documents, and their ties, are the same on every engine.
MODEL_VERSION_IDS = [1, 2, 5, 12]
CONFIDENCES = [0.5, 0.25, 0.75, 0.5, 0.0, 1.0, 0.5]
PROPOSAL_ACTORS = ["model:m@1", "model:m@2", "model:team@eu@3", "model:plain"]
free_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
coordinate = st.none() | st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def sometimes(draw, common, rare, rare_one_in: int = 5):
    """Draw from `rare` about once in `rare_one_in` draws, else from `common`."""
    return draw(rare) if draw(st.integers(1, rare_one_in)) == 1 else draw(common)


@st.composite
def app_states(draw):
    """Mostly well-formed app data, so that about half the annotations train,
    with every kind of dirt mixed in at a lower rate."""
    # Drawn ids reach buckets the fixed ones do not.
    drawn_ids = draw(st.lists(free_text.filter(lambda text: text != ""), min_size=1, max_size=3, unique=True))
    document_ids = DOCUMENT_IDS + [f"doc:{text}" for text in drawn_ids]
    documents = []
    for document_id in document_ids:
        for _ in range(draw(st.sampled_from([1] * 12 + [0, 2]))):  # missing or duplicated at times
            documents.append(Document(document_id, deleted_at=draw(st.sampled_from([None] * 9 + [TIMES[0]]))))
    if draw(st.integers(0, 4)) == 0:
        documents.append(Document(None))

    annotations = []
    for annotation_id in ANNOTATION_IDS:
        for _ in range(draw(st.sampled_from([1] * 12 + [0, 2]))):
            annotations.append(
                Annotation(
                    annotation_id,
                    document_id=draw(st.sampled_from(document_ids * 6 + ["missing-document", None])),
                    text=sometimes(draw, st.sampled_from(GOOD_TEXTS * 4 + BLANK_TEXTS), free_text),
                    page=draw(st.none() | st.integers(1, 5)),
                    x0=draw(coordinate),
                    y0=draw(coordinate),
                    x1=draw(coordinate),
                    y1=draw(coordinate),
                    label=draw(st.sampled_from(GOOD_LABELS + [None])),
                    status=draw(st.sampled_from(["pending", "accepted", "rejected", "weird"])),
                )
            )
    if draw(st.integers(0, 4)) == 0:
        annotations.append(Annotation(None, "d1", "no id"))

    events = []
    arrival = draw(st.permutations(range(1, 61)))  # event ids follow arrival, not time
    for annotation_id in ANNOTATION_IDS + ["ghost", None]:
        for _ in range(draw(st.integers(1 if annotation_id in ANNOTATION_IDS else 0, 5))):
            kind = draw(st.sampled_from(["fresh"] * 8 + ["duplicate", "duplicate", "null"]))
            event_id, occurred_at = arrival[len(events)], draw(st.sampled_from(TIMES * 4 + [None]))
            if kind == "duplicate" and events:
                # The same id and time recorded twice with other content: an exact tie.
                event_id, occurred_at = events[-1].event_id, events[-1].occurred_at
            elif kind == "null":
                event_id = None
            event_type = draw(
                st.sampled_from(["accepted"] * 6 + ["rejected", "deleted"] * 2 + ["proposed"] * 3 + OTHER_TYPES)
            )
            label = sometimes(draw, st.sampled_from(GOOD_LABELS * 3 + BLANK_LABELS + [None]), free_text)
            if kind == "duplicate" and events and draw(st.booleans()):
                event_type, label = events[-1].event_type, events[-1].label  # only the actor may differ
            events.append(
                Event(
                    event_id=event_id,
                    annotation_id=annotation_id,
                    event_type=event_type,
                    label=label,
                    actor=draw(st.sampled_from(ACTORS)),
                    occurred_at=occurred_at,
                )
            )
    return documents, annotations, events


@st.composite
def proposal_rows(draw, annotation_ids: list[str]):
    """training.proposals: each of ``annotation_ids`` proposed for by some of the model
    versions, about one in five by none; equal confidences are common, so the queue's
    order often falls to its tie-breaks."""
    rows = []
    for annotation_id in annotation_ids:
        for model_version_id in MODEL_VERSION_IDS:
            if draw(st.integers(0, 2)) != 0:
                continue
            confidence = draw(st.sampled_from(CONFIDENCES))
            rows.append(
                Proposal(
                    model_version_id,
                    annotation_id,
                    actor=draw(st.sampled_from(PROPOSAL_ACTORS)),
                    label=draw(st.sampled_from(GOOD_LABELS + [""])),
                    confidence=confidence,
                    margin=draw(st.sampled_from([0.0, confidence / 2, confidence])),
                    created_at=draw(st.sampled_from(TIMES)),
                )
            )
    return rows


QUEUED_IDS = ["q1", "q2", "q3", "q4", "q5", "q6"]


@st.composite
def review_states(draw):
    """An app state of app_states, with up to six more segments that nobody decided
    (most of app_states' are decided), placed so that they often share a document,
    a page, a y0 and an x0, some with a change event that gives them a current label;
    and the proposals of the model versions for all of them and for one segment the
    app does not have."""
    documents, annotations, events = draw(app_states())
    document_ids = list(dict.fromkeys(d.document_id for d in documents if d.document_id is not None))
    annotations, events = list(annotations), list(events)
    queued_ids = QUEUED_IDS[: draw(st.integers(0, len(QUEUED_IDS)))]
    for number, annotation_id in enumerate(queued_ids):
        document_id = draw(st.sampled_from(document_ids[:2] or ["missing-document"]))
        page = draw(st.sampled_from([1, 2, None]))
        y0, x0 = draw(st.sampled_from([(10.0, 0.0), (0.0, 5.0), (10.0, 5.0), (None, 0.0), (0.0, None)]))
        reuse = draw(st.sampled_from(["page", "place", "none"])) if number else "none"
        if reuse != "none":  # on the previous one's page, or at its very place (only the id then differs)
            previous = annotations[-1]
            document_id, page = previous.document_id, previous.page
            if reuse == "place":
                y0, x0 = previous.y0, previous.x0
        annotations.append(Annotation(annotation_id, document_id, "to review", page=page, x0=x0, y0=y0))
        if draw(st.booleans()):
            label = draw(st.sampled_from(GOOD_LABELS + [None]))
            events.append(Event(100 + number, annotation_id, "created", label, "user:a", draw(st.sampled_from(TIMES))))
    proposals = draw(proposal_rows(ANNOTATION_IDS + queued_ids + ["ghost"]))
    return documents, annotations, events, proposals


CONFIGURATIONS = {
    "default vars": {},
    "salted, half eval": {"split_salt": "gold'26", "eval_percent": 50},
}


def replace_app_data(space: Workspace, document_rows, annotation_rows, event_rows) -> None:
    for table, rows, kind in (
        ("app.documents", document_rows, Document),
        ("app.annotations", annotation_rows, Annotation),
        ("app.annotation_events", event_rows, Event),
    ):
        columns = list(kind.__dataclass_fields__)
        space.replace_rows(table, columns, [tuple(getattr(row, name) for name in columns) for row in rows])


RELATION_COLUMNS = {
    "training_examples": list(EXAMPLE_COLUMNS),
    "latest_accepted_annotations": [name for name in EXAMPLE_COLUMNS if name != "split"],
    "dataset_summary": ["split", "label", "examples", "documents"],
    "live_segments": ["annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text", "review_state"],
    "proposal_outcomes": [
        "event_id", "annotation_id", "actor", "model_name", "model_version", "proposed_label", "proposed_at",
        "answer_event_id", "outcome",
    ],
    "proposal_acceptance": [
        "actor", "model_name", "model_version", "proposed_label", "proposals", "accepted", "corrected", "rejected",
        "deleted", "pending", "superseded", "acceptance_rate",
    ],
    "review_queue": [
        "annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text", "review_state", "current_label",
        "model_version_id", "proposed_label", "confidence", "margin", "model_name", "version", "proposed_at",
        "priority",
    ],
    "review_queue_documents": [
        "document_id", "pending_segments", "proposed_segments", "mean_uncertainty", "min_confidence", "priority",
    ],
}  # fmt: skip


def view_rows(space: Workspace, relation: str) -> list[dict]:
    columns = RELATION_COLUMNS[relation]
    rows = space.query(f"select {', '.join(columns)} from datasets.{relation}")
    return [dict(zip(columns, row)) for row in rows]


def queue_rows(space: Workspace, proposal_rows: list[Proposal]) -> tuple[list[dict], list[dict]]:
    """Replace training.proposals with ``proposal_rows`` (their model versions exist:
    register_model_versions) and read review_queue and review_queue_documents in
    priority order, all in one session: opening one costs more than these statements."""
    columns = list(Proposal.__dataclass_fields__)
    with space.database().session() as session:
        session.execute("delete from training.proposals")
        if proposal_rows:
            marks = ", ".join(f"({', '.join('?' for _ in columns)})" for _ in proposal_rows)
            session.execute(
                f"insert into training.proposals ({', '.join(columns)}) values {marks}",
                [getattr(row, name) for row in proposal_rows for name in columns],
            )
        return tuple(
            [dict(zip(RELATION_COLUMNS[relation], row)) for row in session.fetchall(
                f"select {', '.join(RELATION_COLUMNS[relation])} from datasets.{relation} order by priority"
            )]
            for relation in ("review_queue", "review_queue_documents")
        )  # fmt: skip


def register_model_versions(space: Workspace) -> None:
    """The results tables as init-db makes them (every migration), and a succeeded run
    with a model version for each of MODEL_VERSION_IDS, so that proposals of those
    versions satisfy training.proposals' foreign key."""
    from trainer.results.store import ResultsStore

    database = space.database()
    with database.session(create=True) as session:
        ResultsStore(database).migrate(session)
        for number, model_version_id in enumerate(MODEL_VERSION_IDS, start=1):
            session.execute(
                "insert into training.training_runs (run_id, model_name, status, created_at, started_at, finished_at, "
                "params, artifact_uri) values (?, 'm', 'succeeded', ?, ?, ?, '{}', ?)",
                (number, TIMES[0], TIMES[0], TIMES[1], f"memory://models/m/{number}"),
            )
            session.execute(
                "insert into training.model_versions (model_version_id, model_name, version, run_id, artifact_uri, "
                "artifact_sha256, created_at) values (?, 'm', ?, ?, ?, ?, ?)",
                (model_version_id, number, number, f"memory://models/m/{number}", "0" * 64, TIMES[1]),
            )


def build_views(space: Workspace, dbt_vars: dict) -> Workspace:
    """The app's tables without keys (any row goes in), the results tables with the
    model versions of MODEL_VERSION_IDS (training.proposals empty), and the views
    over them, built once per test run for these vars and copied into ``space``."""

    def build(template: Workspace) -> None:
        template.execute_script(PLAIN_APP_TABLES)
        register_model_versions(template)
        template.dbt("run", dbt_vars=dbt_vars)

    space.copy_from(built_once(space, ("plain app tables and views", dbt_vars), build))
    return space


@pytest.fixture(
    scope="module",
    params=[(engine, name) for engine in ENGINES for name in CONFIGURATIONS],
    ids=lambda param: f"{param[0]}-{param[1]}",
)
def built_views(request, tmp_path_factory):
    engine, configuration = request.param
    space = new_workspace(tmp_path_factory.mktemp("rules"), engine, request)
    dbt_vars = CONFIGURATIONS[configuration]
    return build_views(space, dbt_vars), dbt_vars


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=review_states())
def test_views_follow_the_contract(built_views, state):
    space, dbt_vars = built_views
    document_rows, annotation_rows, event_rows, proposals = state
    replace_app_data(space, document_rows, annotation_rows, event_rows)
    expected = training_examples(
        document_rows,
        annotation_rows,
        event_rows,
        split_salt=dbt_vars.get("split_salt", ""),
        eval_percent=dbt_vars.get("eval_percent", 20),
    )

    examples = view_rows(space, "training_examples")
    assert {row["annotation_id"]: row for row in examples} == expected
    assert len(examples) == len(expected)

    latest = view_rows(space, "latest_accepted_annotations")
    assert {row["annotation_id"]: row for row in latest} == {
        key: {name: value for name, value in row.items() if name != "split"} for key, row in expected.items()
    }

    summary = {
        (row["split"], row["label"]): (row["examples"], row["documents"]) for row in view_rows(space, "dataset_summary")
    }
    assert summary == dataset_summary(expected)

    # CONTRACT §7: the review loop's relations.
    live = {row["annotation_id"]: row for row in view_rows(space, "live_segments")}
    assert live == live_segments(document_rows, annotation_rows, event_rows)
    outcomes = proposal_outcomes(annotation_rows, event_rows)
    columns = RELATION_COLUMNS["proposal_outcomes"]
    assert sorted((tuple(row[c] for c in columns) for row in view_rows(space, "proposal_outcomes")), key=repr) == sorted(
        (tuple(row[c] for c in columns) for row in outcomes), key=repr
    )
    acceptance = {(row["actor"], row["proposed_label"]): row for row in view_rows(space, "proposal_acceptance")}
    assert acceptance == proposal_acceptance(outcomes)
    # The queue, in priority order: every column of every row, the order itself too.
    # The split's vars do not reach it, and CI replays the same examples in each
    # configuration: one of them checks it (the others leave training.proposals empty).
    if dbt_vars == CONFIGURATIONS["default vars"]:
        queue = review_queue(document_rows, annotation_rows, event_rows, proposals)
        assert queue_rows(space, proposals) == (queue, review_queue_documents(queue))


def test_reference_itself_on_a_worked_example():
    """The reference is only useful if it is right: one hand-checked case per rule."""
    t = TIMES
    docs = [Document("d1"), Document("gone", deleted_at=t[0])]
    anns = [
        Annotation("late", "d1", "Name:"),
        Annotation("tie", "d1", "Date:"),
        Annotation("edited", "d1", "Smith"),
        Annotation("blank-label", "d1", "x"),
        Annotation("blank-text", "d1", " \t"),
        Annotation("on-deleted-doc", "gone", "y"),
        Annotation("orphan", "nowhere", "z"),
    ]
    evs = [
        Event(2, "late", "accepted", "question", "user:r", t[2]),
        Event(3, "late", "rejected", None, "user:r", t[1]),  # recorded later, happened earlier
        Event(4, "tie", "accepted", "answer", "user:r", t[1]),
        Event(5, "tie", "rejected", None, "user:r", t[1]),  # same time, greater id: decides
        Event(6, "edited", "accepted", "answer", "user:r", t[1]),
        Event(7, "edited", "edited", "header", "user:a", t[2]),
        Event(8, "blank-label", "accepted", " \n", "user:r", t[1]),
        Event(9, "blank-text", "accepted", "other", "user:r", t[1]),
        Event(10, "on-deleted-doc", "accepted", "other", "user:r", t[1]),
        Event(11, "orphan", "accepted", "other", "user:r", t[1]),
        Event(12, "ghost", "accepted", "other", "user:r", t[1]),
    ]
    assert sorted(training_examples(docs, anns, evs)) == ["edited", "late"]
    assert training_examples(docs, anns, evs)["edited"]["label"] == "answer"


def test_review_loop_reference_on_a_worked_example():
    """The §7 reference, hand-checked: review states, answers, supersession, outcomes."""
    from reference import model_of

    t = [datetime(2026, 3, 1, 10) + timedelta(hours=k) for k in range(6)]
    docs = [Document("d1"), Document("gone", deleted_at=t[0])]
    anns = [Annotation(a, "d1", "text") for a in ("p", "acc", "chg", "rej", "del", "sup")] + [Annotation("old", "gone", "x")]
    evs = [
        Event(1, "p", "proposed", "question", "model:m@1", t[0]),  # never answered: pending
        Event(2, "acc", "proposed", "answer", "model:m@1", t[0]),
        Event(3, "acc", "accepted", "answer", "user:r", t[1]),  # same label: accepted
        Event(4, "chg", "proposed", "answer", "model:m@1", t[0]),
        Event(5, "chg", "accepted", "answer ", "user:r", t[1]),  # a trailing space: corrected
        Event(6, "chg", "edited", "header", "user:a", t[2]),  # changed after the decision: pending again
        Event(7, "rej", "proposed", "header", "model:team@eu@2", t[0]),
        Event(8, "rej", "rejected", None, "user:r", t[1]),
        Event(9, "del", "proposed", "other", "model:plain", t[0]),
        Event(10, "del", "deleted", None, "user:r", t[1]),  # not live any more
        Event(11, "sup", "proposed", "question", "model:m@1", t[0]),
        Event(12, "sup", "proposed", "answer", "user:a", t[1]),  # a person's proposal supersedes
        Event(13, "sup", "accepted", "answer", "user:r", t[2]),
        Event(14, "ghost", "proposed", "x", "model:m@1", t[0]),  # no annotation row: not counted
    ]
    states = {key: row["review_state"] for key, row in live_segments(docs, anns, evs).items()}
    assert states == {"p": "pending", "acc": "accepted", "chg": "pending", "rej": "rejected", "sup": "accepted"}
    outcomes = {row["event_id"]: (row["outcome"], row["answer_event_id"]) for row in proposal_outcomes(anns, evs)}
    assert outcomes == {
        1: ("pending", None), 2: ("accepted", 3), 4: ("corrected", 5), 7: ("rejected", 8), 9: ("deleted", 10),
        11: ("superseded", 13),
    }  # fmt: skip
    assert model_of("model:team@eu@2") == ("team@eu", "2") and model_of("model:plain") == ("plain", None)
    rates = {key: row["acceptance_rate"] for key, row in proposal_acceptance(proposal_outcomes(anns, evs)).items()}
    assert rates[("model:m@1", "answer")] == 0.5 and rates[("model:m@1", "question")] is None


def test_review_queue_reference_on_a_worked_example():
    """The queue's reference, hand-checked: which segments, which proposal, which order."""
    t = [datetime(2026, 3, 1, 10) + timedelta(hours=k) for k in range(3)]
    docs = [Document("a"), Document("B"), Document("gone", deleted_at=t[0])]
    anns = [
        Annotation("low", "a", "x", page=2),
        Annotation("tie-late", "a", "x", page=1, y0=5.0),
        Annotation("tie-early", "a", "x", page=1, y0=1.0),
        Annotation("tie-doc", "B", "x", page=9),  # B before a by code point
        Annotation("bare", "B", "x", page=1),
        Annotation("done", "B", "x"),
        Annotation("old", "gone", "x"),
    ]
    evs = [
        Event(1, "low", "created", "question", "user:a", t[0]),
        Event(2, "low", "edited", "header", "user:a", t[1]),  # the latest change: current_label
        Event(3, "done", "accepted", "answer", "user:r", t[1]),  # decided: not queued
    ]
    props = [
        Proposal(5, "low", "model:m@2", "answer", 0.25, 0.0),
        Proposal(12, "low", "model:m@3", "other", 0.5, 0.25),  # the newest version wins
        Proposal(1, "tie-late", "model:plain", "q", 0.75, 0.5),
        Proposal(1, "tie-early", "model:m@1", "q", 0.75, 0.5),
        Proposal(1, "tie-doc", "model:team@eu@3", "q", 0.75, 0.5),
        Proposal(1, "done", "model:m@1", "q", 0.0, 0.0),
        Proposal(1, "old", "model:m@1", "q", 0.0, 0.0),  # not live
    ]
    queue = review_queue(docs, anns, evs, props)
    assert [row["annotation_id"] for row in queue] == ["low", "tie-doc", "tie-early", "tie-late", "bare"]
    assert [row["priority"] for row in queue] == [1, 2, 3, 4, 5]
    low, tie_doc, _, tie_late, bare = queue
    assert (low["current_label"], low["model_version_id"], low["proposed_label"], low["confidence"]) == (
        "header", 12, "other", 0.5,
    )  # fmt: skip
    assert (low["model_name"], low["version"]) == ("m", "3")
    assert (tie_doc["model_name"], tie_doc["version"]) == ("team@eu", "3")
    assert (tie_late["model_name"], tie_late["version"]) == ("plain", None)
    assert bare["model_version_id"] is None and bare["confidence"] is None and bare["current_label"] is None
    documents = review_queue_documents(queue)
    assert [(row["document_id"], row["pending_segments"], row["proposed_segments"]) for row in documents] == [
        ("a", 3, 3), ("B", 2, 1),
    ]  # fmt: skip
    assert documents[0]["mean_uncertainty"] == (0.5 + 0.25 + 0.25) / 3 and documents[0]["min_confidence"] == 0.5
    assert documents[1]["mean_uncertainty"] == 0.25 and documents[1]["priority"] == 2
