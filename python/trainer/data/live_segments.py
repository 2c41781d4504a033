"""Reading ``datasets.live_segments`` (CONTRACT §7.1): the app's segments as
reviewers see them, whole documents at a time, for proposing labels.

Each batch of documents is read in a short session of its own: predicting a batch
takes seconds to minutes, and a session held that long would keep a DuckDB file
from everyone else in the process (a job's heartbeat) and from other writers."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from trainer.core.db import Session
from trainer.core.errors import DatasetError
from trainer.data.dataset import BUILD_HINT, DATASETS_SCHEMA, EXAMPLE_SCHEMA

LIVE_SEGMENTS = "live_segments"
# The segment's columns as the examples have them (same names and types), and its state.
LIVE_SEGMENT_SCHEMA = pa.schema(
    [EXAMPLE_SCHEMA.field(name) for name in ("annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text")]
    + [pa.field("review_state", pa.string())]
)
# Rows per record batch when every live segment is streamed.
READ_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class DocumentToPropose:
    document_id: str
    live: int  # its live segments: the pages a model sees
    pending: int  # those pending review


def live_segments_relation(session: Session) -> str:
    """``datasets.live_segments``; a DatasetError saying how to build it when it is missing."""
    if not session.relation_exists(DATASETS_SCHEMA, LIVE_SEGMENTS):
        raise DatasetError(f"{DATASETS_SCHEMA}.{LIVE_SEGMENTS} does not exist; " + BUILD_HINT.format(target=session.dialect))
    return f"{DATASETS_SCHEMA}.{LIVE_SEGMENTS}"


def documents_to_propose(session: Session, pending_only: bool = True) -> list[DocumentToPropose]:
    """The documents with a pending live segment (with any, when ``pending_only`` is
    False), in document_id byte order, with how many live and pending segments each has."""
    relation = live_segments_relation(session)
    having = " having sum(case when review_state = 'pending' then 1 else 0 end) > 0" if pending_only else ""
    rows = session.fetchall(
        "select document_id, count(*), sum(case when review_state = 'pending' then 1 else 0 end) "
        f"from {relation} group by document_id{having} order by document_id{session.bytewise_collation()}"
    )
    return [DocumentToPropose(row[0], int(row[1]), int(row[2])) for row in rows]


def read_live_documents(session: Session, document_ids: list[str]) -> pa.Table:
    """Every live segment of these documents (pending or decided: the page around
    the pending ones), in document_id then annotation_id byte order."""
    relation = live_segments_relation(session)
    collate = session.bytewise_collation()
    table = session.fetch_arrow(
        f"select {', '.join(LIVE_SEGMENT_SCHEMA.names)} from {relation} "
        f"where document_id in ({', '.join('?' for _ in document_ids)}) "
        f"order by document_id{collate}, annotation_id{collate}",
        document_ids,
    )
    return table.cast(LIVE_SEGMENT_SCHEMA)


def batches_of_documents(documents: list[DocumentToPropose], min_rows: int) -> list[list[str]]:
    """Consecutive documents grouped so that each group holds at least ``min_rows``
    live segments (the last may hold fewer); a document is never split."""
    groups: list[list[str]] = []
    current: list[str] = []
    rows = 0
    for document in documents:
        current.append(document.document_id)
        rows += document.live
        if rows >= min_rows:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return groups


PAGE_CONTEXT_COLUMNS = ("annotation_id", "document_id", "page", "x0", "y0", "x1", "y1", "text")


def stream_live_segments(session: Session, batch_rows: int = READ_BATCH_ROWS):
    """Every live segment (:data:`PAGE_CONTEXT_COLUMNS`), as record batches in
    document_id then annotation_id byte order, one batch at a time."""
    relation = live_segments_relation(session)
    collate = session.bytewise_collation()
    schema = pa.schema([LIVE_SEGMENT_SCHEMA.field(name) for name in PAGE_CONTEXT_COLUMNS])
    yield from session.stream_arrow(
        f"select {', '.join(PAGE_CONTEXT_COLUMNS)} from {relation} order by document_id{collate}, annotation_id{collate}",
        schema,
        batch_rows,
    )
