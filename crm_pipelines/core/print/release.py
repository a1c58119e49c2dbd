"""Print lists from build to the print shop: record, approve, release, expire.

A list is built into ``<data dir>/print/lists/<campaign>/<list id>/`` (CSV, manifest, proof) and
recorded in ``ops.print_lists`` as ``built``. Only after an approval (who and when) may it be
released: the CSV and its manifest are copied into the outbox, where the print shop's SFTP
pick-up reads them, under a name that says campaign, date and list. Releasing checks the CSV
against the checksum in the manifest, so a file changed after the approval is refused. Every step
is audited. Lists older than the retention period are deleted from the outbox.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from ..platform.audit import AuditEntry, append
from ..platform.configfile import check_keys, load_yaml, require_mapping
from ..platform.schema import PRINT_HOLDOUTS, PRINT_LISTS, PRINT_QUEUE, PRINT_RECIPIENTS
from ..platform.warehouse import Warehouse, tables_present
from .lists import PrintList, manifest, write_csv
from .proof import render_proof
from .rules import Campaign


class ReleaseRefused(Exception):
    """The list may not go to the print shop (no approval, changed since, unknown)."""


@dataclass(frozen=True)
class PrintSettings:
    outbox: Path
    retention_days: int
    approvals: Path
    robinson_list: Path | None


def load_print_settings(path: str | Path, data_dir: Path) -> PrintSettings:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("outbox", "outbox_retention_days", "approvals", "robinson_list"))
    days = data.get("outbox_retention_days", 30)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise doc.error("outbox_retention_days", "must be a whole number of days between 1 and 3650")
    base = Path(path).parent
    robinson = data.get("robinson_list") or ""
    if robinson and not (base / robinson).is_file() and not Path(robinson).is_file():
        raise doc.error("robinson_list", f"file not found: {robinson}")
    return PrintSettings(Path(data.get("outbox") or data_dir / "print" / "outbox"), days,
                         Path(data.get("approvals") or data_dir / "print" / "approvals"),
                         (base / robinson if (base / robinson).is_file() else Path(robinson)) if robinson else None)


def record_list(wh: Warehouse, pl: PrintList, campaign: Campaign, run_id: str, root: Path, actor: str,
                proof_samples: int | None = None, jobs: list[str] | None = None) -> dict:
    """Writes CSV, proof and manifest; records the list as built; returns the manifest. ``jobs``: a single-recipient
    list of these queued jobs (it supersedes nothing); otherwise the campaign's list, which supersedes the
    campaign's earlier list that was never released and takes over its queued jobs."""
    now = datetime.now(timezone.utc)
    list_id = f"{campaign.name}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    folder = root / campaign.name / list_id
    csv_sha = write_csv(pl.rows, folder / "list.csv")
    pages = render_proof(pl.rows, campaign.name, folder / "proof.pdf", proof_samples or campaign.proof_samples, csv_sha)
    proof_sha = hashlib.sha256((folder / "proof.pdf").read_bytes()).hexdigest()
    doc = {"list_id": list_id, **manifest(pl, campaign, csv_sha, run_id, now, pages), "proof_sha256": proof_sha}
    (folder / "manifest.json").write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
    wh.ensure_tables([PRINT_LISTS, PRINT_RECIPIENTS, PRINT_HOLDOUTS,
                      *([PRINT_QUEUE] if campaign.source == "print_queue" else [])])
    with wh.engine.begin() as conn:
        if jobs is None:
            # An earlier list of the campaign that was never released is superseded by this one.
            conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.campaign == campaign.name,
                                                      PRINT_LISTS.c.status.in_(["built", "approved"]))
                         .values(status="superseded"))
        conn.execute(sa.insert(PRINT_LISTS).values(
            list_id=list_id, campaign=campaign.name, run_id=run_id, created_at=now, folder=str(folder),
            csv_sha256=csv_sha, rules_sha256=campaign.sha256, recipients=len(pl.rows), status="built",
            proof_sha256=proof_sha, prospects=pl.prospects, robinson_checked=pl.robinson_checked))
        wh.bulk_insert(conn, PRINT_RECIPIENTS, pd.DataFrame({
            "list_id": list_id, "recipient_id": pl.rows["recipient_id"], "golden_id": pl.golden_ids,
            "variant": pl.rows["variant"]}))
        if pl.holdout_ids:
            wh.bulk_insert(conn, PRINT_HOLDOUTS, pd.DataFrame({"list_id": list_id, "golden_id": pl.holdout_ids,
                                                               "campaign": campaign.name}))
        if jobs:
            conn.execute(sa.update(PRINT_QUEUE).where(PRINT_QUEUE.c.alert_key.in_(jobs))
                         .values(status="listed", list_id=list_id, reason=None))
        elif campaign.source == "print_queue" and pl.golden_ids:
            # Queued jobs, and jobs on a superseded list, go onto this one; they are printed when it is released.
            conn.execute(sa.update(PRINT_QUEUE).where(PRINT_QUEUE.c.status.in_(["queued", "listed"]),
                                                      PRINT_QUEUE.c.campaign == campaign.name,
                                                      PRINT_QUEUE.c.golden_id.in_(pl.golden_ids))
                         .values(status="listed", list_id=list_id))
    append(wh, [AuditEntry("print.built", actor, list_id, {"campaign": campaign.name, "recipients": len(pl.rows),
                                                           "excluded": pl.excluded, "csv_sha256": csv_sha}, run_id)])
    return doc


def _row(wh: Warehouse, list_id: str) -> dict:
    wh.ensure_tables([PRINT_LISTS])
    frame = wh.read_frame(sa.select(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id))
    if frame.empty:
        raise ReleaseRefused(f"no print list {list_id!r}")
    return frame.iloc[0].to_dict()


MIN_QUOTED_HEX = 12


def quoted_checksum(approver: str, quoted: str, what: str) -> str:
    """The checksum an approval quotes (lower case), after checking that it names an approver and quotes enough of
    a SHA-256; ``what`` says what it must quote."""
    if not approver or not approver.strip():
        raise ReleaseRefused("an approval needs the approver's name")
    quoted = (quoted or "").strip().lower()
    if len(quoted) < MIN_QUOTED_HEX or any(ch not in "0123456789abcdef" for ch in quoted):
        raise ReleaseRefused(f"{what} (at least {MIN_QUOTED_HEX} hex digits)")
    return quoted


def approve(wh: Warehouse, list_id: str, approver: str, csv_sha256: str, run_id: str | None = None) -> None:
    """Records an approval of exactly the list its approver saw: ``csv_sha256`` is the checksum printed on the proof
    and in the manifest (at least its first 12 hex digits). A list that changed since (rebuilt, or an erasure
    took a recipient out) has another checksum: its approval is refused and it needs a new look."""
    quoted = quoted_checksum(approver, csv_sha256, "an approval names the list it approves: quote its SHA-256 from "
                                                   "the proof or the manifest")
    row = _row(wh, list_id)
    if row["status"] != "built":
        raise ReleaseRefused(f"list {list_id} is {row['status']}; only a built list can be approved")
    if not row["csv_sha256"].startswith(quoted):
        append(wh, [AuditEntry("print.approval_refused", f"person:{approver.strip()}", list_id,
                               {"quoted": quoted, "csv_sha256": row["csv_sha256"]}, run_id)])
        raise ReleaseRefused(f"list {list_id} is not the list that was approved: its SHA-256 is "
                             f"{row['csv_sha256'][:16]}..., the approval quotes {quoted[:16]}...; it changed after the "
                             "proof was seen, so look at the new proof and approve that")
    with wh.engine.begin() as conn:
        conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id).values(
            status="approved", approved_by=approver.strip(), approved_at=datetime.now(timezone.utc),
            approved_csv_sha256=row["csv_sha256"]))
    append(wh, [AuditEntry("print.approved", f"person:{approver.strip()}", list_id,
                           {"csv_sha256": row["csv_sha256"], "proof_sha256": row.get("proof_sha256")}, run_id)])


def release(wh: Warehouse, list_id: str, settings: PrintSettings, actor: str, run_id: str | None = None) -> Path:
    row = _row(wh, list_id)
    if row["status"] != "approved" or not row.get("approved_by"):
        append(wh, [AuditEntry("print.release_refused", actor, list_id, {"status": row["status"]}, run_id)])
        raise ReleaseRefused(f"list {list_id} is {row['status']}: it needs an approval (approver and time) before "
                             "it may go to the print shop")
    if int(row.get("prospects") or 0) and settings.robinson_list is None:
        append(wh, [AuditEntry("print.release_refused", actor, list_id, {"reason": "no_robinson_list",
                                                                         "prospects": int(row["prospects"])}, run_id)])
        raise ReleaseRefused(f"list {list_id} addresses {int(row['prospects'])} prospect(s) (no customer relationship): "
                             "set the DDV Robinson list in config/print.yaml (robinson_list), rebuild and approve again")
    if int(row.get("prospects") or 0) and not row.get("robinson_checked"):
        append(wh, [AuditEntry("print.release_refused", actor, list_id, {"reason": "robinson_not_checked"}, run_id)])
        raise ReleaseRefused(f"list {list_id} addresses prospects and was built without a Robinson list: rebuild it")
    folder = Path(row["folder"])
    csv_path = folder / "list.csv"
    actual = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    if actual != row["csv_sha256"] or (row.get("approved_csv_sha256") and actual != row["approved_csv_sha256"]):
        append(wh, [AuditEntry("print.release_refused", actor, list_id, {"reason": "checksum"}, run_id)])
        raise ReleaseRefused(f"list {list_id}: the CSV changed after it was built (SHA-256 {actual[:12]}... instead of "
                             f"{row['csv_sha256'][:12]}...); build and approve it again")
    settings.outbox.mkdir(parents=True, exist_ok=True)
    stem = f"{row['campaign']}_{datetime.now(timezone.utc):%Y%m%d}_{list_id[-8:]}"
    target = settings.outbox / f"{stem}.csv"
    tmp = target.with_suffix(".csv.part")
    shutil.copyfile(csv_path, tmp)
    shutil.copyfile(folder / "manifest.json", settings.outbox / f"{stem}.manifest.json")
    tmp.replace(target)  # the pick-up never sees half a file
    now = datetime.now(timezone.utc)
    queue = tables_present(wh, [PRINT_QUEUE])
    if queue:
        wh.ensure_tables([PRINT_QUEUE])   # an older warehouse gains the list_id column
    with wh.engine.begin() as conn:
        conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id).values(
            status="released", released_at=now, released_file=str(target)))
        if queue:
            conn.execute(sa.update(PRINT_QUEUE).where(PRINT_QUEUE.c.list_id == list_id, PRINT_QUEUE.c.status == "listed")
                         .values(status="printed", printed_at=now))
    append(wh, [AuditEntry("print.released", actor, list_id, {"file": target.name, "approved_by": row["approved_by"],
                                                              "csv_sha256": row["csv_sha256"]}, run_id)])
    return target


def expire_outbox(wh: Warehouse, settings: PrintSettings, actor: str, now: datetime | None = None,
                  run_id: str | None = None) -> list[str]:
    """Deletes released lists older than the retention period from the outbox; returns the file names."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=settings.retention_days)
    wh.ensure_tables([PRINT_LISTS])
    t = PRINT_LISTS
    old = wh.read_frame(sa.select(t.c.list_id, t.c.released_file, t.c.released_at).where(t.c.status == "released"))
    old = old[pd.to_datetime(old["released_at"], utc=True) < pd.Timestamp(cutoff)]
    removed = []
    for row in old.itertuples(index=False):
        path = Path(row.released_file)
        for f in (path, path.with_suffix("").with_suffix(".manifest.json")):
            if f.exists():
                f.unlink()
        removed.append(path.name)
        with wh.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.list_id == row.list_id).values(status="expired"))
        append(wh, [AuditEntry("print.expired", actor, row.list_id, {"file": path.name,
                                                                   "retention_days": settings.retention_days}, run_id)])
    return removed


def remove_recipients(wh: Warehouse, golden_ids, actor: str, run_id: str | None = None) -> dict[str, int]:
    """An erasure reaches the print lists: the person's rows leave every list that is not expired,
    and its outbox copy if it is still there. A changed list loses its approval (it must be
    checked again); a released one is rewritten in the outbox and the change audited, so the print
    shop can be told. Returns recipients removed per list."""
    golden_ids = sorted({g for g in golden_ids if g})
    if not golden_ids:
        return {}
    wh.ensure_tables([PRINT_LISTS, PRINT_RECIPIENTS])
    rec = wh.read_frame(sa.select(PRINT_RECIPIENTS).where(PRINT_RECIPIENTS.c.golden_id.in_(golden_ids)))
    out: dict[str, int] = {}
    for list_id, rows in rec.groupby("list_id"):
        info = _row(wh, list_id)
        if info["status"] in ("expired", "superseded"):
            continue
        gone = set(rows["recipient_id"])
        files = [Path(info["folder"]) / "list.csv"]
        if info["status"] == "released" and info.get("released_file"):
            files.append(Path(info["released_file"]))
        sha = info["csv_sha256"]
        for f in files:
            if not f.exists():
                continue
            frame = pd.read_csv(f, sep=";", dtype=str, keep_default_na=False)
            write_csv(frame[~frame["recipient_id"].isin(gone)], f)
            sha = hashlib.sha256(Path(files[0]).read_bytes()).hexdigest()
        manifest_path = Path(info["folder"]) / "manifest.json"
        if manifest_path.exists():
            doc = json.loads(manifest_path.read_text(encoding="utf-8"))
            doc.update(csv_sha256=sha, recipients=int(doc.get("recipients", 0)) - len(gone),
                       changed_by_erasure=int(doc.get("changed_by_erasure", 0)) + len(gone))
            manifest_path.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
            if info["status"] == "released" and info.get("released_file"):
                released_manifest = Path(info["released_file"]).with_suffix("").with_suffix(".manifest.json")
                if released_manifest.exists():
                    released_manifest.write_text(json.dumps(doc, ensure_ascii=False, indent=2), encoding="utf-8")
        values = {"csv_sha256": sha, "recipients": int(info["recipients"]) - len(gone)}
        if info["status"] == "approved":
            # checked again before release
            values.update(status="built", approved_by=None, approved_at=None, approved_csv_sha256=None)
        with wh.engine.begin() as conn:
            conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id).values(**values))
        append(wh, [AuditEntry("print.recipient_erased", actor, list_id,
                               {"recipients_removed": len(gone), "status_before": info["status"]}, run_id)])
        out[list_id] = len(gone)
    return out


# What an erasure must reach in this outlet besides the warehouse tables: the callers of
# ``privacy.erasure.erase`` pass it as ``copies`` (erasure stands below the outlets and cannot import them).
ERASURE_COPIES = {"print_lists": remove_recipients}
