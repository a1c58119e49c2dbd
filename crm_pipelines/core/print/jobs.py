"""Single-recipient print jobs: the hybrid workflow's brochure, printed for one person within minutes.

A campaign with ``delivery: single`` does not wait for a daily list. Every queued job (``ops.print_queue``: the
sales hand-off of a hot lead, a print journey's entry) becomes its own one-recipient list: the same eligibility
as every list (suppression, objection, postal consent, Robinson list for prospects, complete address), the same
CSV, manifest and proof. Nobody can look at each of these lists, so a person approves the campaign's **template**
once: the rules file (by its SHA-256, printed on the template proof with a specimen recipient per content
variant) and the proof they saw (:func:`approve_template`). A job built under exactly the approved rules is
approved on that standing approval (the list records it: ``approved_by`` names the approver and the template)
and released to the outbox at once. A change of the rules file needs a new template approval; until then the
jobs wait as ``listed`` on their built lists and are rebuilt under the new rules.

A job's end: ``printed`` (its list released), ``dropped`` (the list's exclusion reason: no postal consent,
suppressed, Robinson, incomplete address, ...; or ``erased`` when the contact is gone), or ``merged`` into the
same person's job of the same pass or one printed in the last 30 days (the hand-off and a journey may both ask
for a hot lead's brochure: one brochure, not two). ``jobs = printed + waiting + dropped + merged`` for
every pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from ..platform.audit import AuditEntry, append
from ..platform.schema import PRINT_LISTS, PRINT_QUEUE, PRINT_RECIPIENTS, PRINT_TEMPLATE_APPROVALS
from ..platform.warehouse import Warehouse, select_in, tables_present
from ..privacy_screen.suppression import Screen
from .lists import CSV_COLUMNS, audience_frame, build_list, csv_bytes, letter_rows
from .proof import render_proof
from .release import PrintSettings, ReleaseRefused, quoted_checksum, record_list, release
from .rules import Campaign

# A person the campaign printed for within this time is not printed for again (a second job is merged into it).
REPEAT_AFTER = timedelta(days=30)
# The specimen on the template proof: a fictitious recipient, so the proof holds no one's personal data.
SPECIMEN = {"golden_id": "SPECIMEN", "salutation": "Frau", "academic_title": "Dr.", "first_name": "Erika",
            "last_name": "Mustermann", "company_name": "Musterfirma GmbH", "street": "Musterstraße",
            "house_number": "1", "postal_code": "12345", "city": "Musterstadt", "country": "DE"}


@dataclass
class JobsReport:
    campaign: str
    jobs: int = 0
    printed: int = 0
    waiting: int = 0
    merged: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    lists: list[str] = field(default_factory=list)        # the lists released in this pass
    template_approved: bool = False
    template_proof: str = ""

    @property
    def balanced(self) -> bool:
        return self.jobs == self.printed + self.waiting + self.merged + sum(self.dropped.values())


def template_approval(wh: Warehouse, campaign: Campaign) -> dict | None:
    t = PRINT_TEMPLATE_APPROVALS
    if not tables_present(wh, [t]):
        return None
    rows = wh.read_select(sa.select(t).where(t.c.campaign == campaign.name, t.c.rules_sha256 == campaign.sha256))
    return rows.iloc[0].to_dict() if len(rows) else None


def template_proof(campaign: Campaign, root: Path) -> Path:
    """The template proof: one page per content variant for the specimen recipient, naming the rules' SHA-256 that
    the approval quotes. Written once per rules version."""
    path = root / campaign.name / f"template-{campaign.sha256[:12]}" / "proof.pdf"
    if path.exists():
        return path
    # One specimen per branch: each branch is shown whatever its condition would choose for the specimen.
    specimen = pd.DataFrame([SPECIMEN])
    rows = [letter_rows(specimen.assign(golden_id=f"SPECIMEN-{i}"),
                  replace(campaign, audience=None, branches=(replace(branch, when=None),), dedupe="none"))
            for i, branch in enumerate(campaign.branches)]
    frame = pd.concat(rows, ignore_index=True)[CSV_COLUMNS] if rows else pd.DataFrame(columns=CSV_COLUMNS)
    render_proof(frame, f"{campaign.name} (Vorlage)", path, len(frame), campaign.sha256)
    return path


def approve_template(wh: Warehouse, campaign: Campaign, approver: str, rules_sha256: str, root: Path,
                     run_id: str | None = None) -> None:
    """A standing approval of the campaign's template: ``rules_sha256`` is the checksum on the template proof (at
    least 12 hex digits). Approving a rules version that is not the current file's is refused."""
    if campaign.delivery != "single":
        raise ReleaseRefused(f"campaign {campaign.name} prints lists, not single jobs: approve each list instead")
    quoted = quoted_checksum(approver, rules_sha256, "a template approval quotes the rules' SHA-256 from the "
                                                     "template proof")
    if not campaign.sha256.startswith(quoted):
        append(wh, [AuditEntry("print.template_approval_refused", f"person:{approver.strip()}", campaign.name,
                               {"quoted": quoted, "rules_sha256": campaign.sha256}, run_id)])
        raise ReleaseRefused(f"campaign {campaign.name}: the rules changed since that proof (SHA-256 now "
                             f"{campaign.sha256[:16]}..., the approval quotes {quoted[:16]}...); approve the new "
                             "template proof")
    proof = template_proof(campaign, root)
    proof_sha = hashlib.sha256(proof.read_bytes()).hexdigest()
    wh.ensure_tables([PRINT_TEMPLATE_APPROVALS])
    t = PRINT_TEMPLATE_APPROVALS
    with wh.engine.begin() as conn:
        conn.execute(sa.delete(t).where(t.c.campaign == campaign.name, t.c.rules_sha256 == campaign.sha256))
        conn.execute(sa.insert(t).values(campaign=campaign.name, rules_sha256=campaign.sha256, proof_sha256=proof_sha,
                                         approved_by=approver.strip(), approved_at=datetime.now(timezone.utc)))
    append(wh, [AuditEntry("print.template_approved", f"person:{approver.strip()}", campaign.name,
                           {"rules_sha256": campaign.sha256, "proof_sha256": proof_sha}, run_id)])


def pending_jobs(wh: Warehouse, campaign: str) -> pd.DataFrame:
    """Jobs not printed yet: queued, or listed on a list that was not released."""
    q = PRINT_QUEUE
    if not tables_present(wh, [q]):
        return pd.DataFrame(columns=["alert_key", "golden_id", "status", "list_id", "queued_at"])
    wh.ensure_tables([q])   # an older warehouse gains the reason and printed_at columns
    return wh.read_select(sa.select(q.c.alert_key, q.c.golden_id, q.c.status, q.c.list_id, q.c.queued_at)
                          .where(q.c.campaign == campaign, q.c.status.in_(["queued", "listed"]))
                          .order_by(q.c.queued_at, q.c.alert_key))


def print_jobs(wh: Warehouse, campaign: Campaign, screen: Screen, robinson: set[str], settings: PrintSettings,
               root: Path, actor: str, run_id: str) -> JobsReport:
    """One pass over the campaign's pending jobs (see the module's description)."""
    report = JobsReport(campaign.name)
    jobs = pending_jobs(wh, campaign.name)
    report.jobs = len(jobs)
    approval = template_approval(wh, campaign)
    report.template_approved = approval is not None
    if approval is None:
        report.template_proof = str(template_proof(campaign, root))
    if jobs.empty:
        return report
    lists = _lists(wh, jobs["list_id"])
    audience = audience_frame(wh, campaign, golden_ids=list(jobs["golden_id"]))
    by_gid = {g: i for i, g in enumerate(audience["golden_id"])}
    # golden ID -> the list that printed (or this pass put) the campaign for them: the hand-off and a journey may
    # both ask for the same person's brochure; they get one.
    done: dict[str, str] = _printed_recently(wh, campaign.name, list(jobs["golden_id"]))
    updates: list[dict] = []
    for job in jobs.itertuples(index=False):
        current = lists.get(job.list_id) if isinstance(job.list_id, str) else None
        if current is not None and current["status"] == "released":
            updates.append({"alert_key": job.alert_key, "status": "printed", "reason": None})
            report.printed += 1
            continue
        if job.golden_id in done:
            updates.append({"alert_key": job.alert_key, "status": "merged", "list_id": done[job.golden_id],
                            "reason": f"the same person's brochure (list {done[job.golden_id]})"})
            report.merged += 1
            continue
        # Built afresh on every pass (in memory): a list that waited keeps its files only while the person's data,
        # consent, suppression and the rules are what they were when it was built.
        pl = build_list(audience.iloc[[by_gid[job.golden_id]]].reset_index(drop=True), campaign, screen, robinson) \
            if job.golden_id in by_gid else None
        unchanged = current is not None and current["status"] in ("built", "approved") and pl is not None \
            and len(pl.rows) == 1 and current["rules_sha256"] == campaign.sha256 \
            and hashlib.sha256(csv_bytes(pl.rows)).hexdigest() == current["csv_sha256"] \
            and bool(current["robinson_checked"]) == pl.robinson_checked
        if current is not None and current["status"] in ("built", "approved") and not unchanged:
            _supersede(wh, current["list_id"])
        if pl is None or not len(pl.rows):
            why = "erased" if pl is None else next(iter(pl.excluded), "not_in_audience")
            updates.append({"alert_key": job.alert_key, "status": "dropped", "list_id": None, "reason": why})
            report.dropped[why] = report.dropped.get(why, 0) + 1
            continue
        if not unchanged:
            doc = record_list(wh, pl, campaign, run_id, root, actor, proof_samples=1, jobs=[job.alert_key])
            current = {"list_id": doc["list_id"], "status": "built", "csv_sha256": doc["csv_sha256"],
                       "robinson_checked": pl.robinson_checked}
        done[job.golden_id] = current["list_id"]
        if approval is None:
            report.waiting += 1
            continue
        try:
            _approve_on_template(wh, current, approval, campaign, run_id)
            release(wh, current["list_id"], settings, actor, run_id)
        except ReleaseRefused as exc:
            # A prospect without a Robinson list configured, say: the job waits, the reason is kept.
            updates.append({"alert_key": job.alert_key, "status": "listed", "reason": str(exc)[:300]})
            report.waiting += 1
            continue
        report.printed += 1
        report.lists.append(current["list_id"])
    _update(wh, updates)
    return report


def _printed_recently(wh: Warehouse, campaign: str, golden_ids: list[str]) -> dict[str, str]:
    q = PRINT_QUEUE
    since = datetime.now(timezone.utc) - REPEAT_AFTER
    rows = select_in(wh, sa.select(q.c.golden_id, q.c.list_id).where(
        q.c.campaign == campaign, q.c.status == "printed", q.c.printed_at >= since), q.c.golden_id, golden_ids)
    return dict(zip(rows["golden_id"], rows["list_id"]))


def _lists(wh: Warehouse, list_ids) -> dict[str, dict]:
    pl = PRINT_LISTS
    if not tables_present(wh, [pl]):
        return {}
    rows = select_in(wh, sa.select(pl.c.list_id, pl.c.status, pl.c.rules_sha256, pl.c.csv_sha256, pl.c.robinson_checked),
                     pl.c.list_id, list_ids)
    return {r["list_id"]: r for r in rows.to_dict("records")}


def _supersede(wh: Warehouse, list_id: str) -> None:
    with wh.engine.begin() as conn:
        conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.list_id == list_id).values(status="superseded"))


def _approve_on_template(wh: Warehouse, row: dict, approval: dict, campaign: Campaign, run_id: str) -> None:
    if row["status"] == "approved":
        return
    by = f"{approval['approved_by']} (Vorlage {campaign.sha256[:12]})"
    with wh.engine.begin() as conn:
        conn.execute(sa.update(PRINT_LISTS).where(PRINT_LISTS.c.list_id == row["list_id"],
                                                  PRINT_LISTS.c.status == "built").values(
            status="approved", approved_by=by, approved_at=datetime.now(timezone.utc),
            approved_csv_sha256=row["csv_sha256"], proof_sha256=approval.get("proof_sha256")))
    append(wh, [AuditEntry("print.approved_on_template", f"person:{approval['approved_by']}", row["list_id"],
                           {"rules_sha256": campaign.sha256, "csv_sha256": row["csv_sha256"]}, run_id)])


def _update(wh: Warehouse, updates: list[dict]) -> None:
    q = PRINT_QUEUE
    with wh.engine.begin() as conn:
        for u in updates:
            values = {k: v for k, v in u.items() if k != "alert_key"}
            conn.execute(sa.update(q).where(q.c.alert_key == u["alert_key"]).values(**values))


def printed_recipients(wh: Warehouse, list_ids: list[str]) -> list[str]:
    """The golden IDs on the given lists (the blocking check recomputes their suppression)."""
    r = PRINT_RECIPIENTS
    return list(select_in(wh, sa.select(r.c.golden_id), r.c.list_id, list_ids)["golden_id"])


__all__ = ["JobsReport", "approve_template", "pending_jobs", "print_jobs", "printed_recipients",
           "template_approval", "template_proof"]
