"""The audit trail: an append-only, hash-chained record of every change and privacy request.

Each row's hash covers its sequence number, time, run, actor, action, subject and details, and
the previous row's hash; altering, inserting or deleting a row in the middle breaks the chain at
that row, which :func:`verify` reports. Appends are serialised (an advisory lock on PostgreSQL,
a lock file beside SQLite's files) so two writers never fork the chain.

On PostgreSQL the table refuses UPDATE, DELETE and TRUNCATE for every role through a trigger,
and those privileges are revoked from PUBLIC; give the application role INSERT and SELECT only
and let another role own the table (``sql/60_audit_append_only.sql``), then not even the application
can switch the trigger off.

Subjects are pseudonyms (the salted e-mail hash, a golden ID), never names; ``details`` must not
contain personal data either: callers pass counts, table names, statuses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa

from .schema import AUDIT_LOG
from .warehouse import Warehouse, _file_lock

GENESIS = "0" * 64

PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION ops.audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = 'ops.audit_log is append-only: ' || TG_OP || ' is not allowed',
                          ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS audit_log_no_update ON ops.audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON ops.audit_log
    FOR EACH ROW EXECUTE FUNCTION ops.audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON ops.audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON ops.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION ops.audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON ops.audit_log FROM PUBLIC;
"""


@dataclass(frozen=True)
class AuditEntry:
    action: str
    actor: str
    subject: str | None = None
    details: dict[str, Any] | None = None
    run_id: str | None = None


@dataclass
class VerifyReport:
    ok: bool
    rows: int
    first_bad_seq: int | None = None
    problem: str | None = None


def ensure_audit_table(wh: Warehouse) -> None:
    wh.ensure_tables([AUDIT_LOG])
    if wh.is_postgres and "audit" not in wh._guarded:
        with wh.engine.begin() as conn:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('crm_pipelines.ensure_tables'))")
            conn.exec_driver_sql(PG_APPEND_ONLY)
        wh._guarded.add("audit")


def _row_hash(prev: str, seq: int, at: datetime, run_id, actor, action, subject, details) -> str:
    body = json.dumps([seq, at.astimezone(timezone.utc).isoformat(timespec="microseconds"), run_id, actor, action,
                       subject, details], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def append(wh: Warehouse, entries: Iterable[AuditEntry]) -> int:
    """Appends entries in order, chained to the current tip; returns how many."""
    entries = list(entries)
    if not entries:
        return 0
    ensure_audit_table(wh)
    if wh.is_postgres:
        return _append(wh, entries)
    with _file_lock(Path(wh.engine.url.database).with_suffix(".audit.lock")):
        return _append(wh, entries)


def _append(wh: Warehouse, entries: list[AuditEntry]) -> int:
    t = AUDIT_LOG
    with wh.engine.begin() as conn:
        if wh.is_postgres:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('crm_pipelines.audit_log'))")
        tip = conn.execute(sa.select(t.c.seq, t.c.row_hash).order_by(t.c.seq.desc()).limit(1)).first()
        seq, prev = (tip.seq, tip.row_hash) if tip else (0, GENESIS)
        rows = []
        for e in entries:
            seq += 1
            at = datetime.now(timezone.utc)
            details = json.dumps(e.details, ensure_ascii=False, sort_keys=True, default=str) if e.details else None
            h = _row_hash(prev, seq, at, e.run_id, e.actor, e.action, e.subject, details)
            rows.append({"seq": seq, "at": at, "run_id": e.run_id, "actor": e.actor, "action": e.action,
                         "subject": e.subject, "details": details, "prev_hash": prev, "row_hash": h})
            prev = h
        conn.execute(sa.insert(t), rows)
    return len(rows)


def verify(wh: Warehouse, batch: int = 50_000) -> VerifyReport:
    """Recomputes the chain from the first row; reports the first row that does not fit."""
    ensure_audit_table(wh)
    t = AUDIT_LOG
    prev, expected_seq, n = GENESIS, 1, 0
    with wh.engine.connect() as conn:
        last = 0
        while True:
            rows = conn.execute(sa.select(t).where(t.c.seq > last).order_by(t.c.seq).limit(batch)).all()
            if not rows:
                break
            for r in rows:
                n += 1
                if r.seq != expected_seq:
                    return VerifyReport(False, n, r.seq, f"row {expected_seq} is missing (next is {r.seq})")
                if r.prev_hash != prev:
                    return VerifyReport(False, n, r.seq, "the link to the previous row does not match")
                at = r.at if r.at.tzinfo else r.at.replace(tzinfo=timezone.utc)
                if _row_hash(prev, r.seq, at, r.run_id, r.actor, r.action, r.subject, r.details) != r.row_hash:
                    return VerifyReport(False, n, r.seq, "the row's content does not match its hash (altered)")
                prev, expected_seq = r.row_hash, r.seq + 1
            last = rows[-1].seq
    return VerifyReport(True, n)


def history(wh: Warehouse, subjects: Iterable[str]) -> list[dict]:
    """Every audit row about these subjects, oldest first (for an access export)."""
    subjects = [s for s in subjects if s]
    if not subjects:
        return []
    ensure_audit_table(wh)
    t = AUDIT_LOG
    frame = wh.read_frame(sa.select(t.c.seq, t.c.at, t.c.run_id, t.c.actor, t.c.action, t.c.subject, t.c.details)
                          .where(t.c.subject.in_(subjects)).order_by(t.c.seq))
    out = []
    for r in frame.itertuples(index=False):
        out.append({"seq": int(r.seq), "at": str(r.at), "run_id": r.run_id, "actor": r.actor, "action": r.action,
                    "subject": r.subject, "details": json.loads(r.details) if r.details else None})
    return out
