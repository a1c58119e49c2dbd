"""Deals from the CRM, pulled incrementally: the first pull pages through every deal, later ones read what changed
since the watermark (the search on ``hs_lastmodifieddate``), read again with the full ``dealstage`` history (50 a time), the contacts and companies
each deal is associated with, and the pipeline's stages (probability, closed, won).

Tables (``staging``): ``crm_deals`` (one row per deal, its current stage, amount, currency, close date, owner),
``crm_deal_stages`` (every stage a deal entered and when: the funnel's time in stage), ``crm_deal_links``
(deal -> CRM contact or company). A deal seen again replaces its rows. A deal whose amount, currency or close date
cannot be read is kept without that value and quarantined with the field and the reason (source ``crm_deals``),
so ``deals read = loaded`` and every problem is on record. The watermark (``ops.crm_pull_state``, object type
``deals``) moves to the newest modification read; a pull that fails keeps the old one, so nothing is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd
import sqlalchemy as sa

from ..crm.changes import pull_watermark, set_pull_watermark
from ..crm.hubspot import epoch_ms
from ..crm.protocol import CrmConnector
from ..platform.schema import CRM_DEAL_LINKS, CRM_DEAL_STAGES, CRM_DEALS, CRM_PULL_STATE, QUARANTINE
from ..platform.warehouse import Warehouse, chunks

DEAL_PROPERTIES = ("dealname", "amount", "deal_currency_code", "dealstage", "pipeline", "closedate", "createdate",
                   "hubspot_owner_id", "hs_lastmodifieddate", "erp_order_number")
CURRENCIES = {"EUR", "CHF", "USD", "GBP"}
SOURCE = "crm_deals"


@dataclass
class DealPullReport:
    read: int = 0
    loaded: int = 0
    quarantined: int = 0                        # deals with at least one unreadable value (kept, value empty)
    stage_changes: int = 0
    links: int = 0
    full: bool = False
    watermark_ms: int | None = None
    by_stage: dict[str, int] = field(default_factory=dict)


def stage_table(pipelines: list[dict]) -> pd.DataFrame:
    """Stage ID -> pipeline, label, order, probability, closed, won (a closed stage with probability 1)."""
    rows = []
    for p in pipelines:
        for s in p.get("stages") or []:
            meta = s.get("metadata") or {}
            prob = float(meta.get("probability") or 0.0)
            closed = str(meta.get("isClosed")).lower() == "true"
            rows.append({"stage": s["id"], "pipeline": p["id"], "label": s.get("label"), "order": s.get("displayOrder"),
                         "probability": prob, "is_closed": closed, "is_won": closed and prob >= 1.0})
    return pd.DataFrame(rows, columns=["stage", "pipeline", "label", "order", "probability", "is_closed", "is_won"])


def pull_deals(wh: Warehouse, connector: CrmConnector, run_id: str, full: bool = False,
               now: datetime | None = None) -> DealPullReport:
    now = now or datetime.now(timezone.utc)
    wh.ensure_tables([CRM_DEALS, CRM_DEAL_STAGES, CRM_DEAL_LINKS, CRM_PULL_STATE, QUARANTINE])
    since = None if full else pull_watermark(wh, "deals")
    report = DealPullReport(full=since is None)
    stages = stage_table(connector.pipelines("deals")).set_index("stage")
    # The first pull pages through every deal (the search stops at 10,000 per query and allows 5 requests a
    # second); later ones search what changed since the watermark.
    changed = list(connector.read_objects("deals", DEAL_PROPERTIES)) if since is None else \
        list(connector.changed_since("deals", since, DEAL_PROPERTIES))
    report.read = len(changed)
    if not changed:
        report.watermark_ms = since
        return report
    ids = [str(o["id"]) for o in changed]
    detailed = connector.read_with_history("deals", ids, DEAL_PROPERTIES, ["dealstage"])
    links = {kind: connector.associations("deals", kind, ids) for kind in ("contacts", "companies")}
    deals, history, problems = [], [], []
    for n, obj in enumerate(changed, start=1):
        full_obj = detailed.get(str(obj["id"]), obj)
        p = full_obj.get("properties") or {}
        row, bad = _deal_row(str(obj["id"]), p, stages)
        deals.append({**row, "pulled_at": now, "run_id": run_id})
        if bad:
            problems.append(_quarantine_row(now, run_id, n, str(obj["id"]), bad, full_obj))
        for h in (full_obj.get("propertiesWithHistory") or {}).get("dealstage") or []:
            entered = _timestamp(h.get("timestamp"))
            if entered is not None and h.get("value"):
                history.append({"deal_id": str(obj["id"]), "stage": h["value"], "entered_at": entered,
                                "source_type": h.get("sourceType")})
    link_rows = [{"deal_id": d, "object_type": kind, "object_id": o}
                 for kind, by_deal in links.items() for d, objs in by_deal.items() for o in objs]
    frame = pd.DataFrame(deals)
    with wh.engine.begin() as conn:
        for part in chunks(ids):
            for t in (CRM_DEALS, CRM_DEAL_STAGES, CRM_DEAL_LINKS):
                conn.execute(sa.delete(t).where(t.c.deal_id.in_(part)))
        wh.bulk_insert(conn, CRM_DEALS, frame)
        if history:
            wh.bulk_insert(conn, CRM_DEAL_STAGES, pd.DataFrame(history).drop_duplicates(["deal_id", "stage", "entered_at"]))
        if link_rows:
            wh.bulk_insert(conn, CRM_DEAL_LINKS, pd.DataFrame(link_rows))
        if problems:
            wh.bulk_insert(conn, QUARANTINE, pd.DataFrame(problems))
        newest = max((epoch_ms((o.get("properties") or {}).get("hs_lastmodifieddate") or o.get("updatedAt")) or 0)
                     for o in changed)
        mark = max(newest, since or 0)
        set_pull_watermark(conn, "deals", mark, now, run_id)
    report.loaded, report.quarantined = len(frame), len(problems)
    report.stage_changes, report.links, report.watermark_ms = len(history), len(link_rows), mark
    report.by_stage = frame["stage"].value_counts().to_dict()
    return report


def _deal_row(deal_id: str, p: dict, stages: pd.DataFrame) -> tuple[dict, dict[str, str]]:
    bad: dict[str, str] = {}
    amount = None
    if p.get("amount") not in (None, ""):
        try:
            amount = float(str(p["amount"]).replace(",", "."))
        except ValueError:
            bad["amount"] = "not a number"
    currency = (p.get("deal_currency_code") or "EUR").upper()
    if currency not in CURRENCIES:
        bad["deal_currency_code"] = f"unknown currency {currency[:8]!r}"
        currency = None
    close = _timestamp(p.get("closedate"))
    if p.get("closedate") not in (None, "") and close is None:
        bad["closedate"] = "not a date"
    stage = p.get("dealstage")
    meta = stages.loc[stage] if stage in stages.index else None
    if stage and meta is None:
        bad["dealstage"] = f"stage {stage[:40]!r} is in no pipeline"
    return {"deal_id": deal_id, "deal_name": p.get("dealname"), "pipeline": p.get("pipeline"), "stage": stage,
            "stage_label": None if meta is None else meta["label"],
            "probability": None if meta is None else float(meta["probability"]),
            "is_closed": None if meta is None else bool(meta["is_closed"]),
            "is_won": None if meta is None else bool(meta["is_won"]),
            "amount": amount, "currency": currency, "close_date": close, "created_at": _timestamp(p.get("createdate")),
            "modified_at": _timestamp(p.get("hs_lastmodifieddate")), "owner_id": p.get("hubspot_owner_id"),
            "erp_order_number": (str(p["erp_order_number"]).strip() or None) if p.get("erp_order_number") else None}, bad


def _timestamp(value) -> datetime | None:
    ms = epoch_ms(value)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _quarantine_row(now: datetime, run_id: str, n: int, deal_id: str, bad: dict[str, str], obj: dict) -> dict:
    return {"source": SOURCE, "partition": now.strftime("%Y-%m-%d"), "file": "api:/crm/v3/objects/deals",
            "line_no": None, "record_no": n, "source_record_id": deal_id, "fields": ",".join(sorted(bad)),
            "reason": "; ".join(f"{k}: {v}" for k, v in sorted(bad.items())),
            "raw_payload": json.dumps(obj, ensure_ascii=False, sort_keys=True), "identity_hashes": None,
            "run_id": run_id, "quarantined_at": now}
