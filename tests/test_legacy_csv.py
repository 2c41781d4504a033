"""The legacy CSV export (`train --from-csv`): the split rule in Python against
CONTRACT §3 and dbt, and the reader against CONTRACT §2 and the database snapshot."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import Annotation, Document, Event, training_examples
from reference import split_of as reference_split_of
from test_dataset_rules import build_views, replace_app_data

from trainer.core.errors import ConfigurationError, InputFileError
from trainer.core.settings import project_root
from trainer.data.dataset import EXAMPLE_COLUMNS, dataset_fingerprint, read_training_examples
from trainer.data.legacy_csv import LegacyCsv, read_legacy_csv
from trainer.data.split_rule import SplitRule

HEADER = "annotation_id,document_id,page,text,label,status"
EXPECTED_TYPES = {
    "annotation_id": pa.string(),
    "document_id": pa.string(),
    "page": pa.int32(),
    "x0": pa.float64(),
    "y0": pa.float64(),
    "x1": pa.float64(),
    "y1": pa.float64(),
    "text": pa.string(),
    "label": pa.string(),
    "accepted_at": pa.timestamp("us"),
    "accepted_by": pa.string(),
    "accepted_event_id": pa.int64(),
    "split": pa.string(),
}
UNICODE_IDS = ["Ω文書", "données-é", "d 5", "🙂", "עברית", "a'b", 'q"uote', "tab\tid", "line\nbreak", "\u00a0", " ", ""]
unicode_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


def write(tmp_path: Path, content: str | bytes, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def csv_field(value: str) -> str:
    """One field, quoted as a spreadsheet would (the quoting is written by hand, so
    line endings inside fields are exactly the ones given)."""
    if any(character in value for character in ',"\r\n') or value != value.strip(" "):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_text(rows: list[tuple], header: str = HEADER, newline: str = "\n") -> str:
    return newline.join([header, *(",".join(csv_field(str(value)) for value in row) for row in rows)]) + newline


# --- the split rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("salt", ["", "gold'26", "sel-ü-🙂"])
@pytest.mark.parametrize("percent", [0, 1, 20, 50, 99, 100])
def test_split_of_agrees_with_the_reference(salt, percent):
    rule = SplitRule(split_salt=salt, eval_percent=percent)
    ids = [f"doc-{k}" for k in range(1500)] + [f"{prefix}-{k}" for prefix in UNICODE_IDS for k in range(20)] + UNICODE_IDS
    sides = {document_id: rule.split_of(document_id) for document_id in ids}
    assert sides == {document_id: reference_split_of(document_id, salt, percent) for document_id in ids}
    if percent == 0:
        assert set(sides.values()) == {"train"}
    elif percent == 100:
        assert set(sides.values()) == {"eval"}
    else:
        assert set(sides.values()) == {"train", "eval"}


@given(document_id=unicode_text, salt=unicode_text, percent=st.integers(0, 100))
def test_split_of_agrees_with_the_reference_on_any_text(document_id, salt, percent):
    assert SplitRule(salt, percent).split_of(document_id) == reference_split_of(document_id, salt, percent)


def test_the_boundary_buckets_the_dbt_tests_use():
    # tests/test_dataset_rules.py: doc-63 and doc-52 sit in buckets 19 and 20 by default;
    # with the salt "gold'26", doc-153 and doc-270 sit in buckets 49 and 50.
    default = SplitRule()
    assert (default.bucket("doc-63"), default.bucket("doc-52")) == (19, 20)
    assert (default.split_of("doc-63"), default.split_of("doc-52")) == ("eval", "train")
    salted = SplitRule(split_salt="gold'26", eval_percent=50)
    assert (salted.bucket("doc-153"), salted.bucket("doc-270")) == (49, 50)
    assert (salted.split_of("doc-153"), salted.split_of("doc-270")) == ("eval", "train")


def test_overrides_win_over_the_hash():
    pins = {"doc-63": "train", "doc-52": "eval"}
    rule = SplitRule(overrides=pins)
    assert (rule.split_of("doc-63"), rule.split_of("doc-52"), rule.split_of("doc-1")) == ("train", "eval", "train")
    assert SplitRule(eval_percent=0, overrides={"d": "eval"}).split_of("d") == "eval"
    assert SplitRule(eval_percent=100, overrides={"d": "train"}).split_of("d") == "train"
    # The rule keeps its own copy: changing the caller's dict later moves nothing.
    pins["doc-1"] = "eval"
    assert rule.split_of("doc-1") == "train"
    with pytest.raises(TypeError):
        rule.overrides["doc-1"] = "eval"  # type: ignore[index]
    assert rule == SplitRule(overrides={"doc-63": "train", "doc-52": "eval"})
    assert rule != SplitRule()
    assert hash(rule) == hash(SplitRule(overrides={"doc-52": "eval", "doc-63": "train"}))


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"eval_percent": -1}, "eval_percent must be an integer from 0 to 100, got -1"),
        ({"eval_percent": 101}, "eval_percent must be an integer from 0 to 100, got 101"),
        ({"eval_percent": 12.5}, "eval_percent must be an integer from 0 to 100, got 12.5"),
        ({"eval_percent": "20"}, "eval_percent must be an integer from 0 to 100, got '20'"),
        ({"eval_percent": True}, "eval_percent must be an integer from 0 to 100, got True"),
        ({"split_salt": None}, "split_salt must be a string, got None"),
        ({"overrides": {"d1": "test"}}, "split override for document 'd1' must be 'train' or 'eval', got 'test'"),
        ({"overrides": {"d1": "Eval"}}, "split override for document 'd1' must be 'train' or 'eval', got 'Eval'"),
        ({"overrides": {7: "eval"}}, "split override keys must be document ids (strings), got 7"),
        ({"overrides": [("d1", "eval")]}, "split overrides must map document ids to 'train' or 'eval', got list"),
    ],
)
def test_invalid_rules_are_refused_in_one_line(arguments, message):
    with pytest.raises(ConfigurationError) as raised:
        SplitRule(**arguments)
    assert str(raised.value) == message


def test_from_project_reads_the_repository_dbt_project():
    assert project_root() == Path(__file__).resolve().parents[1]
    assert SplitRule.from_project() == SplitRule(split_salt="", eval_percent=20)
    pinned = SplitRule.from_project(overrides={"doc-63": "train"})
    assert pinned.split_of("doc-63") == "train" and pinned.eval_percent == 20


def project_file(tmp_path: Path, variables: str, name: str = "training_db_pipeline") -> Path:
    (tmp_path / "dbt_project.yml").write_text(f"name: {name}\nversion: '1.0.0'\nvars:\n{variables}", encoding="utf-8")
    return tmp_path


def test_from_project_reads_the_vars_of_a_given_project(tmp_path):
    project = project_file(tmp_path, "  split_salt: \"gold'26\"\n  eval_percent: 35\n")
    assert SplitRule.from_project(project_dir=project) == SplitRule("gold'26", 35)
    # Explicit values win, one at a time or both (then the file is not needed at all).
    assert SplitRule.from_project(project_dir=project, eval_percent=50) == SplitRule("gold'26", 50)
    assert SplitRule.from_project(project_dir=project, split_salt="") == SplitRule("", 35)
    assert SplitRule.from_project(project_dir=tmp_path / "nowhere", split_salt="s", eval_percent="7") == SplitRule("s", 7)


def test_from_project_reads_vars_as_dbt_does(tmp_path):
    # Vars scoped under the project's name win over global ones; an integer salt reads as its
    # digits and a spaced percentage string as its number, as Jinja's `string` filter and
    # macros/split.sql read them.
    project = project_file(
        tmp_path, "  split_salt: 'global'\n  eval_percent: 10\n  training_db_pipeline:\n    split_salt: 2026\n    eval_percent: ' 30 '\n"
    )
    rule = SplitRule.from_project(project_dir=project)
    assert rule == SplitRule("2026", 30)
    assert rule.split_of("doc-1") == reference_split_of("doc-1", "2026", 30)


@pytest.mark.parametrize(
    "variables, message",
    [
        ("  eval_percent: 20\n", "vars.split_salt is not set"),
        ("  split_salt: ''\n", "vars.eval_percent is not set"),
        ("  split_salt: ''\n  eval_percent: twenty\n", "vars.eval_percent must be an integer from 0 to 100, got 'twenty'"),
        ("  split_salt: ''\n  eval_percent: 12.5\n", "vars.eval_percent must be an integer from 0 to 100, got 12.5"),
        ("  split_salt: ''\n  eval_percent: 101\n", "vars.eval_percent must be an integer from 0 to 100, got 101"),
        ("  split_salt: 1.5\n  eval_percent: 20\n", "vars.split_salt must be a string, got 1.5 (quote it)"),
        ("  split_salt: \"{{ env_var('SALT') }}\"\n  eval_percent: 20\n", "vars.split_salt is a Jinja expression"),
        ("  split_salt: [unclosed\n", "not valid YAML"),
    ],
)
def test_from_project_refuses_bad_vars_naming_the_file(tmp_path, variables, message):
    project = project_file(tmp_path, variables)
    with pytest.raises(ConfigurationError) as raised:
        SplitRule.from_project(project_dir=project)
    assert str(raised.value).startswith(f"{project / 'dbt_project.yml'}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_from_project_without_a_project_file_says_so(tmp_path):
    with pytest.raises(ConfigurationError, match=re.escape(f"{tmp_path / 'dbt_project.yml'}: cannot read the split settings")):
        SplitRule.from_project(project_dir=tmp_path)


# --- reading a good export ----------------------------------------------------------------------------

TRICKY_TEXTS = {
    "newlines": "Name:\nfirst line\nsecond line",
    "crlf": "Total\r\ndue",
    "quotes": 'He said "yes", then "no"',
    "commas": "a, b, c",
    "rtl": "RTL: שלום עולם",
    "emoji": "emoji 👩🏽\u200d💻 🙂",
    "spaces": "  padded  ",
    "nbsp": "\u00a0",
}
# (annotation_id, document_id, page, text, label, status); the ids are out of byte order on purpose.
GOOD_ROWS = [
    ("a2", "doc-1", 1, TRICKY_TEXTS["newlines"], "question", "accepted"),
    ("a10", "doc-1", 2, TRICKY_TEXTS["crlf"], "answer", "accepted"),
    ("B7", "doc-52", 1, TRICKY_TEXTS["quotes"], " answer ", "accepted"),
    ("é1", "Ω文書", 3, TRICKY_TEXTS["rtl"], "ラベル", "accepted"),
    ("Z9", "doc-63", 1, TRICKY_TEXTS["emoji"], "Question", "accepted"),
    ("a3", "doc-63", 12, TRICKY_TEXTS["commas"], "\u3000", "accepted"),  # an ideographic space is a label
    ("a4", "données-é", 1, TRICKY_TEXTS["nbsp"], "other", "accepted"),  # a no-break space is text
    ("a5", "doc-1", 1, TRICKY_TEXTS["spaces"], "header", "accepted"),
    ("p1", "doc-1", 1, "Pending text", "question", "pending"),
    ("r1", "doc-1", 1, "Rejected text", "question", "rejected"),
    ("b1", "doc-1", 1, "Blank label", "", "accepted"),
    ("b2", "doc-1", 1, "Blank label too", " \t\n\r\f\v", "accepted"),
    ("b3", "doc-1", 1, "", "question", "accepted"),
    ("b4", "doc-1", 1, "\r\n\t ", "question", "accepted"),
    ("b5", "doc-1", 1, "\v", "question", "accepted"),
]
TRAINED = ["a2", "a10", "B7", "é1", "Z9", "a3", "a4", "a5"]


def expected_rows(rule: SplitRule, rows=GOOD_ROWS) -> list[dict]:
    by_id = {row[0]: row for row in rows}
    return [
        {
            "annotation_id": annotation_id,
            "document_id": by_id[annotation_id][1],
            "page": by_id[annotation_id][2],
            "x0": None,
            "y0": None,
            "x1": None,
            "y1": None,
            "text": by_id[annotation_id][3],
            "label": by_id[annotation_id][4],
            "accepted_at": None,
            "accepted_by": None,
            "accepted_event_id": None,
            "split": rule.split_of(by_id[annotation_id][1]),
        }
        for annotation_id in sorted(TRAINED, key=lambda value: value.encode("utf-8"))
    ]


def assert_snapshot_schema(table: pa.Table) -> None:
    assert tuple(table.column_names) == EXAMPLE_COLUMNS
    assert {field.name: field.type for field in table.schema} == EXPECTED_TYPES


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_good_export_gives_the_accepted_non_blank_rows_byte_exact(tmp_path, newline, bom):
    content = bom + csv_text(GOOD_ROWS, newline=newline).encode("utf-8")
    path = write(tmp_path, content)
    rule = SplitRule()
    result = read_legacy_csv(path, rule)

    assert isinstance(result, LegacyCsv)
    assert result.rows == len(GOOD_ROWS)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert_snapshot_schema(result.examples)
    assert result.examples.to_pylist() == expected_rows(rule)
    texts = dict(zip(result.examples.column("annotation_id").to_pylist(), result.examples.column("text").to_pylist()))
    assert texts["a10"] == "Total\r\ndue" and texts["a2"] == "Name:\nfirst line\nsecond line"
    assert {split for split in result.examples.column("split").to_pylist()} == {"train", "eval"}


def test_extra_columns_in_any_order_are_ignored(tmp_path):
    header = "note,status,label,text,page,document_id,annotation_id,reviewer"
    rows = [("n", row[5], row[4], row[3], row[2], row[1], row[0], "someone") for row in GOOD_ROWS]
    result = read_legacy_csv(write(tmp_path, csv_text(rows, header=header)), SplitRule())
    assert result.examples.to_pylist() == expected_rows(SplitRule())


def test_the_rule_and_its_overrides_decide_the_split(tmp_path):
    path = write(tmp_path, csv_text(GOOD_ROWS))
    everything_eval = read_legacy_csv(path, SplitRule(eval_percent=100, overrides={"doc-1": "train"}))
    sides = dict(zip(everything_eval.examples.column("document_id").to_pylist(), everything_eval.examples.column("split").to_pylist()))
    assert sides == {"doc-1": "train", "doc-52": "eval", "Ω文書": "eval", "doc-63": "eval", "données-é": "eval"}
    salted = SplitRule(split_salt="gold'26", eval_percent=50)
    assert read_legacy_csv(path, salted).examples.to_pylist() == expected_rows(salted)


def test_a_header_without_rows_gives_an_empty_snapshot(tmp_path):
    result = read_legacy_csv(write(tmp_path, HEADER + "\n"), SplitRule())
    assert result.rows == 0 and result.examples.num_rows == 0
    assert_snapshot_schema(result.examples)


def test_blank_lines_between_rows_are_skipped(tmp_path):
    result = read_legacy_csv(write(tmp_path, f"{HEADER}\n\na1,d1,1,Name:,question,accepted\n\n"), SplitRule())
    assert result.rows == 1 and result.examples.column("annotation_id").to_pylist() == ["a1"]


def test_the_fingerprint_matches_the_reference_reading_of_the_same_annotations(tmp_path):
    """The same annotations, accepted in the app's event log, give the same examples."""
    rule = SplitRule(split_salt="gold'26", eval_percent=50)
    result = read_legacy_csv(write(tmp_path, csv_text(GOOD_ROWS)), rule)
    documents, annotations, events = app_data(GOOD_ROWS)
    expected = training_examples(documents, annotations, events, rule.split_salt, rule.eval_percent)
    assert sorted(expected) == sorted(TRAINED)
    reference_table = pa.Table.from_pylist(list(expected.values()))
    assert dataset_fingerprint(result.examples) == dataset_fingerprint(reference_table)


def app_data(rows) -> tuple[list[Document], list[Annotation], list[Event]]:
    """The app's tables holding the export's annotations: accepted and rejected
    rows have a deciding event with the row's label, pending rows none."""
    documents = [Document(document_id) for document_id in sorted({row[1] for row in rows})]
    annotations = [Annotation(row[0], row[1], row[3], page=row[2], label=row[4], status=row[5]) for row in rows]
    events = [
        Event(event_id, row[0], row[5], row[4], "user:reviewer", datetime(2026, 3, 1, 10, 0, 0))
        for event_id, row in enumerate(rows, start=1)
        if row[5] != "pending"
    ]
    return documents, annotations, events


@pytest.mark.parametrize("dbt_vars", [{}, {"split_salt": "gold'26", "eval_percent": 50}], ids=["defaults", "salted"])
def test_the_snapshot_matches_the_database_snapshot(workspace, tmp_path, dbt_vars):
    """dbt builds the views over the same annotations; the trainer reads them; the
    export gives the same examples, the same Arrow types and the same fingerprint."""
    build_views(workspace, dbt_vars)
    replace_app_data(workspace, *app_data(GOOD_ROWS))
    with workspace.database().session() as session:
        database = read_training_examples(session)
    rule = SplitRule.from_project(**dbt_vars)
    result = read_legacy_csv(write(tmp_path, csv_text(GOOD_ROWS, newline="\r\n")), rule)

    assert dataset_fingerprint(result.examples) == dataset_fingerprint(database)
    same = ["annotation_id", "document_id", "page", "text", "label", "split"]
    assert result.examples.select(same).to_pylist() == database.select(same).to_pylist()
    assert result.examples.schema == database.schema


# --- refusing a bad export ----------------------------------------------------------------------------

GOOD_LINE = "a1,d1,1,Name:,question,accepted"
BAD_EXPORTS = {
    "missing column": (
        "annotation_id,document_id,page,text,label\na1,d1,1,Name:,question\n",
        "line 1: missing required column(s) status",
    ),
    "duplicate column": (
        f"{HEADER},page\n{GOOD_LINE},2\n",
        "line 1, column 7: duplicate column 'page'",
    ),
    "bad encoding": (
        f"{HEADER}\n{GOOD_LINE}\na2,d1,1,caf".encode() + b"\xe9" + b",question,accepted\n",
        "line 3, column 12: not valid UTF-8 (byte 0xe9)",
    ),
    "ragged row": (
        f"{HEADER}\n{GOOD_LINE}\na2,d1,1,Name:,question\n",
        "line 3: 5 fields where the header has 6",
    ),
    "NUL byte": (
        f"{HEADER}\n{GOOD_LINE}\na2,d1,1,Na\x00me,question,accepted\n",
        "line 3, column 11: NUL byte",
    ),
    "unterminated quote": (
        f'{HEADER}\n{GOOD_LINE}\na2,d1,1,"Name:,question,accepted\n',
        "line 3: unexpected end of data",
    ),
    "unknown status": (
        f"{HEADER}\n{GOOD_LINE}\n" + "\n".join(f"a{k},d1,1,t,l,pending" for k in range(2, 6)) + "\na6,d1,1,t,l,done\n",
        "line 7, column 6: unknown status 'done' (expected pending, accepted or rejected)",
    ),
    "status in another case": (
        f"{HEADER}\na1,d1,1,Name:,question,Accepted\n",
        "line 2, column 6: unknown status 'Accepted' (expected pending, accepted or rejected)",
    ),
    "status with a space": (
        f"{HEADER}\na1,d1,1,Name:,question,accepted \n",
        "line 2, column 6: unknown status 'accepted ' (expected pending, accepted or rejected)",
    ),
    "empty status": (
        f"{HEADER}\na1,d1,1,Name:,question,\n",
        "line 2, column 6: unknown status '' (expected pending, accepted or rejected)",
    ),
    "fractional page": (f"{HEADER}\na1,d1,2.0,Name:,question,accepted\n", "line 2, column 3: page '2.0' is not an integer >= 1"),
    "page zero": (f"{HEADER}\na1,d1,0,Name:,question,accepted\n", "line 2, column 3: page '0' is not an integer >= 1"),
    "negative page": (f"{HEADER}\na1,d1,-1,Name:,question,accepted\n", "line 2, column 3: page '-1' is not an integer >= 1"),
    "empty page": (f"{HEADER}\na1,d1,,Name:,question,pending\n", "line 2, column 3: page '' is not an integer >= 1"),
    "spaced page": (f"{HEADER}\na1,d1, 1,Name:,question,accepted\n", "line 2, column 3: page ' 1' is not an integer >= 1"),
    "non-ASCII digit page": (f"{HEADER}\na1,d1,١,Name:,question,accepted\n", "line 2, column 3: page '١' is not an integer >= 1"),
    "page past int32": (
        f"{HEADER}\na1,d1,2147483648,Name:,question,accepted\n",
        "line 2, column 3: page '2147483648' is too large (at most 2147483647)",
    ),
    "empty annotation_id": (f"{HEADER}\n{GOOD_LINE}\n,d1,1,Name:,question,rejected\n", "line 3, column 1: empty annotation_id"),
    "empty document_id": (f"{HEADER}\na1,,1,Name:,question,pending\n", "line 2, column 2: empty document_id"),
    "duplicate annotation_id": (
        f"{HEADER}\n{GOOD_LINE}\na2,d1,1,t,l,pending\na1,d2,1,Other,answer,rejected\n",
        "line 4, column 1: duplicate annotation_id 'a1' (first on line 2)",
    ),
    "a problem after a multi-line field": (
        f'{HEADER}\na1,d1,1,"three\nline\ntext",question,accepted\na2,d1,1,t,l,done\n',
        "line 5, column 6: unknown status 'done' (expected pending, accepted or rejected)",
    ),
    "the leftmost problem of a row": (
        "status,page,annotation_id,document_id,text,label\nfinished,x,a1,d1,t,l\n",
        "line 2, column 1: unknown status 'finished' (expected pending, accepted or rejected)",
    ),
    "a long bad value": (
        f"{HEADER}\na1,d1,1,Name:,question,{'x' * 100}\n",
        f"line 2, column 6: unknown status '{'x' * 60}'... (expected pending, accepted or rejected)",
    ),
    "a bad value with a newline": (
        f'{HEADER}\na1,d1,1,Name:,question,"accepted\nnow"\n',
        "line 2, column 6: unknown status 'accepted\\nnow' (expected pending, accepted or rejected)",
    ),
    "empty file": (b"", "line 1: the file is empty (expected a header row with annotation_id, document_id, page, text, label, status)"),
    "only a BOM": (
        b"\xef\xbb\xbf",
        "line 1: the file is empty (expected a header row with annotation_id, document_id, page, text, label, status)",
    ),
    "only a blank line": (b"\n", "line 1: missing required column(s) annotation_id, document_id, page, text, label, status"),
}


@pytest.mark.parametrize("case", list(BAD_EXPORTS))
def test_a_bad_export_is_refused_in_one_line_naming_file_line_and_column(tmp_path, case):
    content, message = BAD_EXPORTS[case]
    path = write(tmp_path, content)
    with pytest.raises(InputFileError) as raised:
        read_legacy_csv(path, SplitRule())
    assert str(raised.value) == f"{path}: {message}"
    assert "\n" not in str(raised.value) and "\r" not in str(raised.value)


def test_a_missing_file_is_refused(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(InputFileError, match=re.escape(f"{path}: cannot read: No such file or directory")):
        read_legacy_csv(path, SplitRule())
