"""Warehouse tables, derived from the canonical model (the DDL in ``sql/`` is generated from here).

Layers are schemas: ``raw`` (one table per source, as delivered but typed), ``staging``,
``golden``, ``marts`` and ``ops`` (quarantine, file ledger, and later sync state and
audit). On SQLite each layer is its own attached database file.
"""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from .model import RAW_LINEAGE_COLUMNS, Entity, Field

LAYERS = ("raw", "staging", "golden", "marts", "ops")


def sa_type(type_: str) -> sa.types.TypeEngine:
    return {
        "string": sa.Text(),
        "integer": sa.BigInteger(),
        "decimal": sa.Numeric(18, 4),
        "date": sa.Date(),
        "datetime": sa.DateTime(timezone=True),
        "boolean": sa.Boolean(),
    }[type_]


def _column(f: Field, nullable: bool = True) -> sa.Column:
    return sa.Column(f.name, sa_type(f.type), nullable=nullable, comment=f.meaning)


metadata = sa.MetaData()

QUARANTINE = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text(), nullable=False, comment="source name (mapping file stem)"),
    sa.Column("partition", sa.Text(), nullable=False, comment="landing-zone day YYYY-MM-DD"),
    sa.Column("file", sa.Text(), nullable=False, comment="landing file name"),
    sa.Column("line_no", sa.BigInteger(), comment="line where the record starts (null for JSON documents)"),
    sa.Column("record_no", sa.BigInteger(), nullable=False, comment="1-based record number in the file"),
    sa.Column("source_record_id", sa.Text(), comment="record ID when it could be read"),
    sa.Column("fields", sa.Text(), comment="comma-separated source fields with problems"),
    sa.Column("reason", sa.Text(), nullable=False, comment="every problem of the record; personal values masked"),
    sa.Column("raw_payload", sa.Text(), nullable=False, comment="the record exactly as delivered"),
    sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
    schema="ops",
    comment="Records that failed parsing or mapping, with their reason. Never silently dropped.",
)
sa.Index("ix_quarantine_source_partition", QUARANTINE.c.source, QUARANTINE.c.partition)

LANDING_FILES = sa.Table(
    "landing_files", metadata,
    sa.Column("source", sa.Text(), primary_key=True),
    sa.Column("partition", sa.Text(), primary_key=True),
    sa.Column("file", sa.Text(), primary_key=True),
    sa.Column("sha256", sa.Text(), nullable=False),
    sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False, comment="loaded | duplicate"),
    sa.Column("duplicate_of", sa.Text(), comment="partition/file already delivered with the same content"),
    sa.Column("rows_read", sa.BigInteger(), nullable=False),
    sa.Column("rows_loaded", sa.BigInteger(), nullable=False),
    sa.Column("rows_quarantined", sa.BigInteger(), nullable=False),
    sa.Column("run_id", sa.Text(), nullable=False),
    sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
    schema="ops",
    comment="Ledger of every landing file seen: content hash, status and row counts.",
)
sa.Index("ix_landing_files_sha256", LANDING_FILES.c.source, LANDING_FILES.c.sha256)


def raw_table(source: str, entity: Entity, md: sa.MetaData | None = None) -> sa.Table:
    md = metadata if md is None else md
    key = f"raw.{source}"
    if key in md.tables:
        return md.tables[key]
    cols = [_column(f, nullable=not f.required) for f in RAW_LINEAGE_COLUMNS]
    # Entity fields stay nullable in raw: required-ness is enforced by the mapper and the
    # quarantine, and a later model change must not make old partitions unloadable.
    cols += [_column(f) for f in entity.fields]
    table = sa.Table(source, md, *cols, schema="raw", comment=f"{entity.name} records from source {source}")
    sa.Index(f"ix_{source}_partition", table.c._partition)
    return table


def ddl(tables: Iterable[sa.Table], dialect_name: str = "postgresql") -> str:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}[dialect_name]
    out: list[str] = []
    for t in tables:
        stmt = str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)).strip()
        out.append(stmt + ";")
        for idx in sorted(t.indexes, key=lambda i: i.name):
            out.append(str(CreateIndex(idx, if_not_exists=True).compile(dialect=dialect)).strip() + ";")
    return "\n\n".join(out) + "\n"
