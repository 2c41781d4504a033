"""`propose` (CONTRACT §7.3): a model version labels the app's pending live segments
into training.proposals, each with its page as the app has it; again, it rewrites
only what changed; the demo's reviewers answer, and the views say how it fared."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ENGINES, TRAINED_DOCUMENTS, Workspace, _train_twice, built_once, new_workspace

LIVE_COLUMNS = "annotation_id, document_id, page, x0, y0, x1, y1, text, review_state"


@pytest.fixture(scope="module", params=ENGINES)
def proposed(tmp_path_factory, request):
    """The trained workspace (two versions of `funsd`) after one `propose` of its
    latest version, and that command's output."""
    space = new_workspace(tmp_path_factory.mktemp(f"propose-{request.param}"), request.param, request)
    template = built_once(space, ("trained", TRAINED_DOCUMENTS), _train_twice)
    space.copy_from(template, with_artifacts=True)
    result = space.trainer("propose", "--model-name", "funsd", "--quiet")
    assert result.returncode == 0, result.stderr
    return space, result.stdout


def _proposals(space) -> dict[str, tuple]:
    rows = space.query(
        "select annotation_id, model_version_id, actor, label, confidence, margin, created_at from training.proposals"
    )
    return {row[0]: row[1:] for row in rows}


def test_one_proposal_per_pending_live_segment(proposed):
    space, stdout = proposed
    pending = {row[0] for row in space.query("select annotation_id from datasets.live_segments where review_state = 'pending'")}
    assert len(pending) > 20
    proposals = _proposals(space)
    assert set(proposals) == pending
    (version_id, version), = space.query(
        "select model_version_id, version from training.model_versions where model_name = 'funsd' order by version desc limit 1"
    )
    assert version == 2
    assert f"Proposed {len(pending)} label(s) with funsd version 2 (model:funsd@2): {len(pending)} new, 0 changed, 0 unchanged" in stdout
    labels = {"question", "answer", "header", "other"}
    for model_version_id, actor, label, confidence, margin, _ in proposals.values():
        assert model_version_id == version_id and actor == "model:funsd@2"
        assert label in labels
        assert 0.25 <= confidence <= 1.0 and 0.0 <= margin <= confidence


def test_each_segment_is_predicted_with_its_page_as_the_app_has_it(proposed):
    """The proposal is the model's prediction among every live segment of the page,
    decided ones too: computed here independently, document by document."""
    from trainer.core.blob_store import ArtifactStore
    from trainer.model.classifier import SegmentClassifier, SegmentRows
    from trainer.results.store import ResultsStore

    space, _ = proposed
    version = ResultsStore(space.database()).get_model_version("funsd", None)
    classifier = SegmentClassifier.load(ArtifactStore(str(space.artifacts)), version.artifact_uri, version.artifact_sha256)
    assert classifier.features.neighbours  # the page matters to this model
    proposals = _proposals(space)
    documents = [row[0] for row in space.query(
        "select document_id from datasets.live_segments group by document_id "
        "having sum(case when review_state = 'pending' then 1 else 0 end) > 0 "
        "and sum(case when review_state <> 'pending' then 1 else 0 end) > 5 order by document_id limit 2"
    )]  # fmt: skip
    assert len(documents) == 2
    differs = 0
    for document_id in documents:
        rows = space.query(f"select {LIVE_COLUMNS} from datasets.live_segments where document_id = ? order by annotation_id", [document_id])
        whole_page = SegmentRows([r[1] for r in rows], [r[2] for r in rows], np.array([r[3:7] for r in rows], dtype=float))
        probabilities = classifier.predict_segments([r[7] for r in rows], whole_page)
        pending = [i for i, r in enumerate(rows) if r[8] == "pending"]
        alone = [rows[i] for i in pending]
        only_pending = classifier.predict_segments(
            [r[7] for r in alone], SegmentRows([r[1] for r in alone], [r[2] for r in alone], np.array([r[3:7] for r in alone], dtype=float))
        )
        for position, i in enumerate(pending):
            _, _, label, confidence, margin, _ = proposals[rows[i][0]]
            ranked = np.sort(probabilities[i])[::-1]
            assert label == classifier.labels[int(probabilities[i].argmax())]
            assert confidence == pytest.approx(ranked[0], abs=1e-6)
            assert margin == pytest.approx(ranked[0] - ranked[1], abs=1e-6)
            differs += not np.allclose(only_pending[position], probabilities[i], atol=1e-6)
    assert differs > 0  # the decided segments around them did change the predictions


def test_again_changes_nothing_then_only_what_changed(proposed, tmp_path):
    space, _ = proposed
    copy = Workspace(tmp_path, space.target, space.server and space.server.create_database(), space.server)
    copy.copy_from(space, with_artifacts=True)
    before = _proposals(copy)

    again = copy.trainer("propose", "--model-name", "funsd", "--model-version", "2", "--quiet")
    assert again.returncode == 0, again.stderr
    assert f": 0 new, 0 changed, {len(before)} unchanged" in again.stdout
    assert _proposals(copy) == before  # created_at included: nothing rewritten

    # The app changes the text of one pending segment: its proposal (and perhaps its
    # neighbours') changes, nothing is new, and the others keep their rows.
    target = sorted(before)[0]
    copy.execute_script(f"update app.annotations set text = 'TOTAL AMOUNT DUE:' where annotation_id = '{target}'")
    third = copy.trainer("propose", "--model-name", "funsd", "--quiet")
    assert third.returncode == 0, third.stderr
    after = _proposals(copy)
    assert set(after) == set(before)
    changed = {key for key in after if after[key] != before[key]}
    assert target in changed
    assert f": 0 new, {len(changed)} changed, {len(before) - len(changed)} unchanged" in third.stdout

    # --all: every live segment, decided ones too; the pending ones are unchanged.
    every = copy.trainer("propose", "--model-name", "funsd", "--all", "--quiet")
    assert every.returncode == 0, every.stderr
    live = copy.query("select count(*) from datasets.live_segments")[0][0]
    assert f"Proposed {live} label(s)" in every.stdout
    assert f": {live - len(before)} new, 0 changed, {len(before)} unchanged" in every.stdout


def test_the_demo_reviewers_answer_and_the_views_count_them(proposed, tmp_path):
    space, _ = proposed
    copy = Workspace(tmp_path, space.target, space.server and space.server.create_database(), space.server)
    copy.copy_from(space, with_artifacts=True)
    proposals = _proposals(copy)
    result = copy.trainer("demo-reviews", "--model-name", "funsd")
    assert result.returncode == 0, result.stderr
    counts = dict(
        copy.query("select outcome, count(*) from datasets.proposal_outcomes where actor = 'model:funsd@2' group by outcome")
    )
    assert sum(counts.values()) == len(proposals)
    assert set(counts) <= {"accepted", "corrected", "rejected"}
    assert (
        f"Reviewed {len(proposals)} proposal(s) of funsd version 2: {counts.get('accepted', 0)} accepted, "
        f"{counts.get('corrected', 0)} corrected, {counts.get('rejected', 0)} rejected." in result.stdout
    )
    # Every proposal was answered: nothing of it is pending in the app any more.
    still = copy.query(
        "select count(*) from datasets.live_segments where review_state = 'pending' and annotation_id in "
        "(select annotation_id from training.proposals)"
    )[0][0]
    assert still == 0

    # `acceptance` prints the view's counts per proposed label beside the eval precision.
    accepted = copy.trainer("acceptance", "--model-name", "funsd")
    assert accepted.returncode == 0, accepted.stderr
    lines = accepted.stdout.splitlines()
    assert lines[0] == "funsd version 2 in the field (model:funsd@2):"
    precision = dict(copy.query(
        "select m.label, m.value from training.metrics m join training.model_versions v on v.run_id = m.run_id "
        "where v.model_name = 'funsd' and v.version = 2 and m.split = 'eval' and m.name = 'precision'"
    ))  # fmt: skip
    by_label = copy.query(
        "select proposed_label, proposals, accepted, corrected, rejected, pending from datasets.proposal_acceptance "
        "where actor = 'model:funsd@2' order by proposed_label"
    )
    assert by_label
    for label, proposals, kept, corrected, rejected, pending in by_label:
        line = next(line for line in lines if line.split()[0] == label)
        rate = f"{kept / (kept + corrected + rejected):.3f}" if kept + corrected + rejected else ""
        expected = [label, str(proposals), str(kept), str(corrected), str(rejected), str(pending), rate]
        if precision.get(label) is not None:
            expected.append(f"{precision[label]:.3f}")
        assert line.split() == expected
    total = sum(row[1] for row in by_label)
    assert next(line for line in lines if line.strip().startswith("all labels")).split()[2] == str(total)

    # The run's report gains the same figures in its section "in the field".
    report = copy.trainer("report", "latest", "--output", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="in-the-field">'):]
    section = section[: section.index("</section>")]
    assert "model:funsd@2" in section
    for label, proposals, *_ in by_label:
        assert f"<tr><td>{label}</td><td class=\"num\">{proposals:,}</td>" in section


def test_the_report_says_when_nothing_was_proposed_yet(trained, tmp_path):
    space, _, _ = trained
    report = space.trainer("report", "latest", "--output", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "holds no proposal of <code>model:funsd@2</code> yet" in page


def test_refusals_are_one_line(proposed, tmp_path):
    space, _ = proposed
    unknown = space.trainer("propose", "--model-name", "nobody", "--quiet")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "Error: model 'nobody' has no versions (train one with `python -m trainer train`)"
    ]
    bad = space.trainer("propose", "--model-name", "funsd", "--model-version", "zero")
    assert bad.returncode == 2 and "'zero' is not a version number or 'latest'" in bad.stderr
    bare = Workspace(tmp_path, space.target, space.server and space.server.create_database(), space.server)
    bare.copy_from(space, with_artifacts=True)
    bare.execute_script(
        "drop view datasets.review_queue_documents; drop view datasets.review_queue; drop view datasets.live_segments"
    )
    missing = bare.trainer("propose", "--model-name", "funsd", "--quiet")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"Error: datasets.live_segments does not exist; build the datasets first: dbt build --profiles-dir profiles --target {space.target}"
    ]
