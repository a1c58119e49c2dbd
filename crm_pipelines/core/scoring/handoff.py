"""Sales hand-off: a hot lead (an SQL crossing, a new trade-fair lead, a service request) gets an
owner, a follow-up task in the CRM and one notification, exactly once.

Exactly once, because the alert ledger (``ops.alert_ledger``) is keyed by what happened
(``sql:<golden id>:<when it entered SQL>``, ``lead:<source>:<record id>``): a sensor that
re-evaluates, a retried run or a second batch finds the key and does only the steps still
missing (owner, task, each channel), never one twice.

Who may be alerted about: nobody on the suppression list; for an SQL crossing only contacts who
may be addressed by e-mail or phone (consent) or are customers; a new lead only if they did not
object or withdraw on both channels; a service request (a customer asking for help: contract)
unless suppressed. The rep is told what they need to act (name, company, place, why, the CRM
record), not the person's e-mail or phone, which are in the CRM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import sqlalchemy as sa

from ..platform.configfile import check_keys, load_yaml, require_mapping
from ..platform.notify import Message
from ..platform.schema import ALERT_LEDGER, PRINT_QUEUE
from ..platform.warehouse import Warehouse
from ..privacy.consent import allows
from .tasks import CREATED, Task

Log = Callable[[str], None]


# ============================================================================ territories

@dataclass(frozen=True)
class Rep:
    id: str
    name: str
    email: str
    capacity: int = 1_000_000


@dataclass(frozen=True)
class Team:
    name: str
    lead: Rep
    reps: tuple[Rep, ...]


@dataclass(frozen=True)
class TerritoryRule:
    team: str
    prefixes: tuple[str, ...] = ()            # "8", "80": Leitzone, Leitregion ...
    ranges: tuple[tuple[str, str], ...] = ()  # inclusive PLZ ranges ("01000", "09999")
    industries: tuple[str, ...] = ()

    def matches(self, plz: str | None, industry: str | None) -> bool:
        if self.industries and industry not in self.industries:
            return False
        if self.prefixes or self.ranges:
            return bool(plz) and (plz.startswith(self.prefixes) or any(lo <= plz <= hi for lo, hi in self.ranges))
        return True


@dataclass(frozen=True)
class Territories:
    path: Path
    follow_up_hours: float
    teams: dict[str, Team]
    rules: tuple[TerritoryRule, ...]

    def team_for(self, plz: str | None, industry: str | None) -> Team:
        for rule in self.rules:
            if rule.matches(plz, industry):
                return self.teams[rule.team]
        return next(iter(self.teams.values()))

    def assign(self, plz: str | None, industry: str | None, open_counts: dict[str, int],
               assigned_counts: dict[str, int]) -> tuple[Team, Rep]:
        """The team's rep with the fewest open hand-offs below capacity (ties: fewest ever, then the
        order listed: round robin); the team lead when everyone is full."""
        team = self.team_for(plz, industry)
        free = [(open_counts.get(r.id, 0), assigned_counts.get(r.id, 0), i, r) for i, r in enumerate(team.reps)
                if open_counts.get(r.id, 0) < r.capacity]
        if not free:
            return team, team.lead
        return team, min(free, key=lambda x: x[:3])[3]


def load_territories(path: str | Path) -> Territories:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("follow_up_hours", "teams", "rules"), required=("teams", "rules"))
    hours = data.get("follow_up_hours", 2)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not 0 < hours <= 168:
        raise doc.error("follow_up_hours", f"must be a number of hours between 0 and 168, got {hours!r}")
    teams = {}
    for name, spec in require_mapping(doc, data["teams"], "teams").items():
        key = f"teams.{name}"
        spec = require_mapping(doc, spec, key)
        check_keys(doc, spec, key, ("lead", "reps"), required=("lead", "reps"))
        lead = _rep(doc, spec["lead"], f"{key}.lead")
        reps = spec["reps"]
        if not isinstance(reps, list) or not reps:
            raise doc.error(f"{key}.reps", "must list at least one rep")
        teams[name] = Team(name, lead, tuple(_rep(doc, r, f"{key}.reps[{i}]") for i, r in enumerate(reps)))
    rules = []
    raw_rules = data["rules"]
    if not isinstance(raw_rules, list) or not raw_rules:
        raise doc.error("rules", "must list at least one rule")
    for i, r in enumerate(raw_rules):
        key = f"rules[{i}]"
        r = require_mapping(doc, r, key)
        check_keys(doc, r, key, ("team", "plz", "industries"), required=("team",))
        if r["team"] not in teams:
            raise doc.error(f"{key}.team", f"unknown team '{r['team']}'; teams: {', '.join(teams)}")
        prefixes, ranges = [], []
        for p in r.get("plz") or []:
            p = str(p)
            if "-" in p:
                lo, hi = (x.strip() for x in p.split("-", 1))
                if not (lo.isdigit() and hi.isdigit() and len(lo) == len(hi) == 5 and lo <= hi):
                    raise doc.error(f"{key}.plz", f"'{p}' is not a PLZ range like 01000-09999")
                ranges.append((lo, hi))
            elif p.isdigit() and 1 <= len(p) <= 5:
                prefixes.append(p)
            else:
                raise doc.error(f"{key}.plz", f"'{p}' is neither a PLZ prefix (digits) nor a range")
        industries = r.get("industries") or []
        if not isinstance(industries, list):
            raise doc.error(f"{key}.industries", "must be a list")
        rules.append(TerritoryRule(r["team"], tuple(prefixes), tuple(ranges), tuple(str(x) for x in industries)))
    return Territories(Path(path), float(hours), teams, tuple(rules))


def _rep(doc, spec, key: str) -> Rep:
    spec = require_mapping(doc, spec, key)
    check_keys(doc, spec, key, ("id", "name", "email", "capacity"), required=("id", "name", "email"))
    cap = spec.get("capacity", 1_000_000)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise doc.error(f"{key}.capacity", "must be a whole number, at least 1")
    return Rep(str(spec["id"]), str(spec["name"]), str(spec["email"]), cap)


# ============================================================================ hand-off

@dataclass
class Lead:
    """One thing to hand off. Personal fields are only what the rep needs."""

    alert_key: str
    kind: str                           # sql_crossing | trade_fair_lead | service_request
    golden_id: str | None
    record_key: str | None
    name: str
    company: str | None
    postal_code: str | None
    city: str | None
    industry: str | None
    score: float | None
    reasons: str                        # human-readable, no personal data
    landed_at: datetime | None
    contact_crm_id: str | None = None
    may_contact: bool = True
    suppressed: bool = False
    brochure: bool = False              # queue a printed brochure (the hybrid workflow)
    brochure_campaign: str = "broschuere"   # the print campaign whose single-recipient job it becomes


@dataclass
class Channels:
    """Where hand-offs are announced: any of a Slack webhook, a Teams workflow, e-mail to the owner."""

    slack: object | None = None          # notify.WebhookChannel(kind="slack")
    teams: object | None = None          # notify.WebhookChannel(kind="teams")
    email: object | None = None          # notify.SmtpChannel
    crm_link: str = "{crm}/{id}"   # CRM_WEB_URL + the contact's CRM ID

    def names(self) -> list[str]:
        return [n for n in ("slack", "teams", "email") if getattr(self, n) is not None]


@dataclass
class HandoffReport:
    leads: int = 0
    new: int = 0
    already_done: int = 0
    suppressed: int = 0
    no_consent: int = 0
    tasks_created: int = 0
    tasks_pending: int = 0              # alert sent, CRM task not created yet (CRM unreachable); retried
    notified: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    brochures_queued: int = 0


KIND_TITLES = {"sql_crossing": "Heißer Lead (SQL)", "trade_fair_lead": "Neuer Messe-Lead",
               "service_request": "Neue Serviceanfrage"}


def message_for(lead: Lead, owner: Rep, due_at: datetime, link: str | None) -> Message:
    place = " ".join(p for p in (lead.postal_code, lead.city) if p)
    fields = [("Kontakt", lead.name), ("Firma", lead.company or "–"), ("Ort", place or "–"),
              ("Zuständig", owner.name), ("Erstkontakt bis", due_at.astimezone(_BERLIN).strftime("%d.%m.%Y %H:%M"))]
    if lead.score is not None:
        fields.insert(3, ("Score", f"{lead.score:g}"))
    if lead.reasons:
        fields.insert(4, ("Warum", lead.reasons))
    return Message(title=f"{KIND_TITLES.get(lead.kind, 'Lead')}: {lead.name}", fields=fields, link=link,
                   footer=f"Aufgabe im CRM, fällig in 2 Stunden. Schlüssel {lead.alert_key}")


try:
    from zoneinfo import ZoneInfo

    _BERLIN = ZoneInfo("Europe/Berlin")
except Exception:  # pragma: no cover - tzdata missing
    _BERLIN = timezone.utc


def hand_off(wh: Warehouse, leads: Sequence[Lead], territories: Territories, channels: Channels, connector,
             run_id: str, now: datetime | None = None, crm_url: str = "", log: Log | None = None) -> HandoffReport:
    """Owner and notifications first, then the CRM tasks in one batch: the rep hears about the lead at
    once, and a slow or unreachable CRM (its retries take a minute) delays only the task, never the alert.
    A hand-off whose task could not be created keeps ``task_crm_id`` empty and gets it the next time the
    lead is handed over (a retried run, the next scoring run)."""
    log = log or (lambda _m: None)
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([ALERT_LEDGER, PRINT_QUEUE])
    report = HandoffReport(leads=len(leads))
    open_counts, assigned = _workload(wh)
    tasks: list[Task] = []
    for lead in leads:
        row = _ledger_row(wh, lead.alert_key)
        if row is not None and row["status"] in ("notified", "done", "suppressed", "no_consent"):
            report.already_done += 1
            if row["status"] == "notified" and not row.get("task_crm_id") and row.get("owner_id"):
                tasks.append(_task(lead, row["owner_id"], _aware(row["due_at"])))
            continue
        if row is None:
            status = "suppressed" if lead.suppressed else ("no_consent" if not lead.may_contact else "open")
            if not _insert(wh, lead, status, now, run_id):
                report.already_done += 1  # another run took it a moment ago
                continue
            report.new += 1
            if status != "open":
                setattr(report, status, getattr(report, status) + 1)
                continue
            row = _ledger_row(wh, lead.alert_key)
        team, owner = _owner(territories, row, lead, open_counts, assigned)
        due_at = _aware(row["due_at"]) if row.get("due_at") is not None else now + timedelta(hours=territories.follow_up_hours)
        updates: dict = {"team": team.name, "owner_id": owner.id, "due_at": due_at}
        if not row.get("task_crm_id"):
            tasks.append(_task(lead, owner.id, due_at))
        notified = json.loads(row["notified"]) if row.get("notified") else {}
        link = channels.crm_link.format(crm=crm_url.rstrip("/"), id=lead.contact_crm_id) \
            if lead.contact_crm_id and crm_url else None
        msg = message_for(lead, owner, due_at, link)
        for name in channels.names():
            if notified.get(name) == "sent":
                continue
            channel = getattr(channels, name)
            delivery = channel.send(msg, owner.email) if name == "email" else channel.send(msg)
            notified[name] = "sent" if delivery.ok else f"failed: {delivery.detail}"
            bucket = report.notified if delivery.ok else report.failed
            bucket[name] = bucket.get(name, 0) + 1
            if not delivery.ok:
                log(f"{lead.alert_key}: {name} failed ({delivery.detail}); retried with the next run")
        updates["notified"] = json.dumps(notified, sort_keys=True)
        all_sent = all(v == "sent" for v in notified.values())
        updates["status"] = "notified" if all_sent else "failed"
        if lead.brochure and _queue_brochure(wh, lead, now):
            report.brochures_queued += 1
        with wh.engine.begin() as conn:
            conn.execute(sa.update(ALERT_LEDGER).where(ALERT_LEDGER.c.alert_key == lead.alert_key).values(**updates))
        if row.get("owner_id") is None:
            open_counts[owner.id] = open_counts.get(owner.id, 0) + 1
            assigned[owner.id] = assigned.get(owner.id, 0) + 1
    if tasks and connector is not None:
        _create_tasks(wh, connector, tasks, report, log)
    return report


def _task(lead: Lead, owner_id: str, due_at: datetime) -> Task:
    return Task(lead.alert_key, f"{KIND_TITLES.get(lead.kind, 'Lead')}: {lead.name} anrufen",
                f"{lead.company or ''} {lead.postal_code or ''} {lead.city or ''}. {lead.reasons}".strip(),
                due_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
                contact_crm_id=lead.contact_crm_id, owner_id=owner_id)


def _create_tasks(wh: Warehouse, connector, tasks: list[Task], report: HandoffReport, log: Log) -> None:
    batch = getattr(connector, "max_batch", 100)
    for start in range(0, len(tasks), batch):
        results = connector.create_tasks(tasks[start:start + batch])
        created = [r for r in results if r.status == CREATED]
        report.tasks_created += len(created)
        report.tasks_pending += len(results) - len(created)
        for r in results:
            if r.status != CREATED:
                log(f"{r.key}: CRM task not created ({r.message}); the alert went out, the task follows "
                    "with the next hand-off run")
        if created:
            with wh.engine.begin() as conn:  # one transaction per batch, not per task
                for r in created:
                    conn.execute(sa.update(ALERT_LEDGER).where(ALERT_LEDGER.c.alert_key == r.key)
                                 .values(task_crm_id=r.crm_id))


def _owner(territories: Territories, row: dict, lead: Lead, open_counts, assigned) -> tuple[Team, Rep]:
    if row.get("owner_id"):
        team = territories.teams.get(row.get("team") or "") or territories.team_for(lead.postal_code, lead.industry)
        for rep in (*team.reps, team.lead):
            if rep.id == row["owner_id"]:
                return team, rep
    return territories.assign(lead.postal_code, lead.industry, open_counts, assigned)


def _workload(wh: Warehouse) -> tuple[dict[str, int], dict[str, int]]:
    t = ALERT_LEDGER
    rows = wh.read_frame(sa.select(t.c.owner_id, t.c.status, t.c.first_activity_at).where(t.c.owner_id.is_not(None)))
    open_ = rows[rows["first_activity_at"].isna() & rows["status"].isin(["open", "notified", "failed"])]
    return open_["owner_id"].value_counts().to_dict(), rows["owner_id"].value_counts().to_dict()


def _ledger_row(wh: Warehouse, key: str) -> dict | None:
    frame = wh.read_frame(sa.select(ALERT_LEDGER).where(ALERT_LEDGER.c.alert_key == key))
    return None if frame.empty else frame.iloc[0].to_dict()


def _insert(wh: Warehouse, lead: Lead, status: str, now: datetime, run_id: str) -> bool:
    try:
        with wh.engine.begin() as conn:
            conn.execute(sa.insert(ALERT_LEDGER).values(
                alert_key=lead.alert_key, kind=lead.kind, golden_id=lead.golden_id, record_key=lead.record_key,
                score=lead.score, landed_at=lead.landed_at, created_at=now, status=status, run_id=run_id))
        return True
    except sa.exc.IntegrityError:
        return False


def _queue_brochure(wh: Warehouse, lead: Lead, now: datetime) -> bool:
    if not lead.golden_id:
        return False
    try:
        with wh.engine.begin() as conn:
            conn.execute(sa.insert(PRINT_QUEUE).values(alert_key=lead.alert_key, golden_id=lead.golden_id,
                                                       campaign=lead.brochure_campaign, queued_at=now, status="queued"))
        return True
    except sa.exc.IntegrityError:
        return False


def _aware(value) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


# ============================================================================ who may be alerted about

def may_alert(kind: str, email_consent, email_basis, phone_consent, phone_basis, is_customer: bool) -> bool:
    if kind == "service_request":
        return True  # the customer asked us: contract
    if kind == "trade_fair_lead":
        refused = {"objected", "withdrawn"}
        return not (email_consent in refused and phone_consent in refused)
    return allows("email", email_consent, email_basis, is_customer) or allows("phone", phone_consent, phone_basis,
                                                                              is_customer) or is_customer


def wants_brochure(score: float | None, stage: str | None, post_consent, post_basis, is_customer: bool,
                   has_address: bool, min_score: float, stages: Sequence[str]) -> bool:
    return (score is not None and score >= min_score and stage in stages and has_address
            and allows("post", post_consent, post_basis, is_customer))


# ============================================================================ SLA

@dataclass
class SlaReport:
    open: int = 0                  # hand-offs without a first CRM activity
    checked: int = 0               # of them, due for a check this time (near or past their deadline)
    done: int = 0
    escalated: int = 0
    escalation_failed: int = 0
    response_minutes: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SlaTiming:
    """When a hand-off is looked at (config/operations.yaml): from ``before_due`` ahead of its due time,
    again every ``recheck`` until its first CRM activity, and no longer ``give_up`` past its due time
    (by then the escalation went out long ago and the response time is a matter for the funnel)."""

    before_due: timedelta = timedelta(minutes=15)
    recheck: timedelta = timedelta(minutes=10)
    give_up: timedelta = timedelta(days=14)


def _due_for_check(now: datetime, timing: SlaTiming):
    t = ALERT_LEDGER
    return sa.and_(t.c.first_activity_at.is_(None), t.c.status.in_(["notified", "failed"]), t.c.due_at.is_not(None),
                   t.c.due_at <= now + timing.before_due, t.c.due_at > now - timing.give_up,
                   sa.or_(t.c.sla_checked_at.is_(None), t.c.sla_checked_at <= now - timing.recheck))


def sla_due(wh: Warehouse, timing: SlaTiming, now: datetime | None = None) -> int:
    """How many hand-offs are due for a check now (one indexed count: the SLA sensor asks every minute)."""
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([ALERT_LEDGER])
    return int(wh.scalar(sa.select(sa.func.count()).select_from(ALERT_LEDGER).where(_due_for_check(now, timing))) or 0)


def check_sla(wh: Warehouse, connector, territories: Territories, escalate, now: datetime | None = None,
              log: Log | None = None, timing: SlaTiming = SlaTiming()) -> SlaReport:
    """Records the first CRM activity (the follow-up task done) of the hand-offs near or past their due
    time, which ends their response time, and escalates those past it to the team lead (once). Their
    tasks are read in batches of 100 (one call, not one per task); the rest wait for their window.

    ``escalate(team, message) -> Delivery`` sends to the team leads' channel."""
    log = log or (lambda _m: None)
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([ALERT_LEDGER])
    t = ALERT_LEDGER
    report = SlaReport(open=int(wh.scalar(sa.select(sa.func.count()).select_from(t).where(
        t.c.first_activity_at.is_(None), t.c.status.in_(["notified", "failed"]))) or 0))
    rows = wh.read_frame(sa.select(t).where(_due_for_check(now, timing)).order_by(t.c.due_at))
    report.checked = len(rows)
    task_ids = [str(i) for i in rows["task_crm_id"].dropna()]
    tasks = connector.read_by("tasks", task_ids, ["hs_task_status", "hs_task_completion_date"]) if task_ids else {}
    for row in rows.to_dict("records"):
        updates: dict = {"sla_checked_at": now}
        task = tasks.get(str(row["task_crm_id"])) if row.get("task_crm_id") else None
        props = (task or {}).get("properties") or {}
        if props.get("hs_task_status") == "COMPLETED":
            done_at = pd.Timestamp(props.get("hs_task_completion_date") or task.get("updatedAt") or now)
            done_at = (done_at.tz_localize("UTC") if done_at.tzinfo is None else done_at.tz_convert("UTC")).to_pydatetime()
            start = _aware(row["landed_at"]) if row.get("landed_at") is not None else _aware(row["created_at"])
            updates.update(first_activity_at=done_at, status="done")
            report.done += 1
            report.response_minutes.append((done_at - start).total_seconds() / 60)
        elif _aware(row["due_at"]) < now and row.get("escalated_at") is None:
            team = territories.teams.get(row.get("team") or "") or next(iter(territories.teams.values()))
            overdue = (now - _aware(row["due_at"])).total_seconds() / 60
            msg = Message(title=f"Überfällig: Erstkontakt nicht erfolgt ({team.name})",
                          fields=[("Hand-off", row["alert_key"]), ("Zuständig", row.get("owner_id") or "–"),
                                  ("Überfällig seit", f"{overdue:.0f} min")],
                          footer=f"Bitte übernehmen, {team.lead.name}")
            delivery = escalate(team, msg)
            if delivery.ok:
                updates["escalated_at"] = now
                report.escalated += 1
            else:
                report.escalation_failed += 1
                log(f"{row['alert_key']}: escalation failed ({delivery.detail}); tried again next time")
        with wh.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.alert_key == row["alert_key"]).values(**updates))
    return report
