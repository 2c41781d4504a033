"""The app's three tables (CONTRACT §1), for the embedded default and for
development databases. In production the app owns and writes them."""

from __future__ import annotations

from trainer.core.db import Session

APP_TABLES = ("documents", "annotations", "annotation_events")


def app_table_statements(schema: str) -> list[str]:
    return [
        f"""
        create table if not exists {schema}.documents (
            document_id text not null,
            filename text not null,
            sha256 text,
            page_count integer,
            created_at timestamp not null,
            deleted_at timestamp,
            constraint documents_document_id_pkey primary key (document_id)
        )""",
        f"""
        create table if not exists {schema}.annotations (
            annotation_id text not null,
            document_id text not null,
            page integer not null,
            x0 double precision,
            y0 double precision,
            x1 double precision,
            y1 double precision,
            text text not null,
            label text,
            status text not null,
            created_at timestamp not null,
            updated_at timestamp not null,
            constraint annotations_annotation_id_pkey primary key (annotation_id)
        )""",
        f"""
        create table if not exists {schema}.annotation_events (
            event_id bigint not null,
            annotation_id text not null,
            event_type text not null,
            label text,
            actor text not null,
            occurred_at timestamp not null,
            note text,
            constraint annotation_events_event_id_pkey primary key (event_id)
        )""",
    ]


def create_app_tables(session: Session, schema: str) -> list[str]:
    """Create the app's tables that are absent; return the names created."""
    missing = [name for name in APP_TABLES if not session.relation_exists(schema, name)]
    if missing:
        session.ensure_schema(schema)
        for statement in app_table_statements(schema):
            session.execute(statement)
    return missing


def missing_app_tables(session: Session, schema: str) -> list[str]:
    return [name for name in APP_TABLES if not session.relation_exists(schema, name)]
