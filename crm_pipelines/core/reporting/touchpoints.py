"""One table of touches across every channel the project knows, for attribution and the funnel.

| channel | from | moment | campaign |
|---|---|---|---|
| ``web_form`` | web-form leads (their person records) | submitted | the form's campaign field |
| ``trade_fair`` | trade-fair scans | scanned | the fair |
| ``newsletter`` | newsletter sign-ups | signed up | the list signed up to |
| ``service`` | service requests | created | |
| ``web``, ``webinar`` | behaviour events (page views, prices, demo videos, whitepapers; webinars) | occurred | UTM campaign |
| ``email`` | the marketing tool's opens and clicks | occurred | UTM campaign or the mailing's tag |
| ``print`` | each recipient of a released print list | released (the drop) | the print campaign |
| ``sales`` | each sales hand-off (an alert to a rep) | created | the hand-off's kind |

A touch belongs to a golden contact: person records through the crosswalk, events by e-mail, CRM contact ID or
the anonymous visitor's other events (as the lead score attributes them); events of nobody known are left out.
Bounces, unsubscribes, deliveries and consent changes are not touches. ``touch_key`` names each touch's origin,
so the table can be rebuilt and compared; ``detail`` is an event's type (page view, pricing page ...).
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from ..model import ENTITIES
from ..platform.schema import (ALERT_LEDGER, PERSON_CROSSWALK, PERSON_RECORDS, PRINT_LISTS, PRINT_RECIPIENTS,
                               raw_table)
from ..platform.warehouse import Warehouse, tables_present
from ..scoring.leads import identity_maps
from ..scoring.rules import attribute_events
from ..sources.roles import ENGAGEMENT_SOURCES

COLUMNS = ["touch_key", "golden_id", "channel", "campaign", "source", "detail", "at"]
PERSON_CHANNELS = {"web_form_leads": "web_form", "trade_fair_leads": "trade_fair",
                   "newsletter_signups": "newsletter", "service_requests": "service"}
# Where a person source keeps its campaign: (the entity its mapping loads, the field).
CAMPAIGN_FIELDS = {"web_form_leads": ("contact", "campaign"), "trade_fair_leads": ("contact", "campaign"),
                   "newsletter_signups": ("consent_event", "purpose")}
EVENT_CHANNELS = {"page_view": "web", "pricing_page": "web", "demo_video": "web", "whitepaper_download": "web",
                  "webinar_attended": "webinar", "email_open": "email", "email_click": "email"}


def build_touchpoints(wh: Warehouse) -> pd.DataFrame:
    """Every touch of a known contact, oldest first (see the module's description)."""
    frames = [_person_touches(wh), _event_touches(wh), _print_touches(wh), _sales_touches(wh)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    out["at"] = pd.to_datetime(out["at"], utc=True, format="mixed")
    out = out.dropna(subset=["golden_id", "at"]).drop_duplicates("touch_key")
    return out.sort_values(["at", "touch_key"], kind="stable").reset_index(drop=True)


def _person_touches(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [PERSON_RECORDS, PERSON_CROSSWALK]):
        return pd.DataFrame(columns=COLUMNS)
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    rows = wh.read_select(sa.select(pr.c.record_key, pr.c.source, pr.c.source_record_id, pr.c.record_ts,
                                    xw.c.golden_id)
                          .join(xw, xw.c.record_key == pr.c.record_key)
                          .where(xw.c.valid_to.is_(None), pr.c.source.in_(list(PERSON_CHANNELS))))
    rows["campaign"] = None
    for source, (entity, column) in CAMPAIGN_FIELDS.items():
        t = raw_table(source, ENTITIES[entity])
        if not tables_present(wh, [t]):
            continue
        raw = wh.read_select(sa.select(t.c.source_record_id, t.c[column].label("campaign"), t.c._partition))
        raw = raw.sort_values("_partition").drop_duplicates("source_record_id", keep="last")
        mine = rows["source"] == source
        rows.loc[mine, "campaign"] = rows.loc[mine, "source_record_id"].map(
            dict(zip(raw["source_record_id"].astype(str), raw["campaign"])))
    return pd.DataFrame({"touch_key": "record:" + rows["record_key"], "golden_id": rows["golden_id"],
                         "channel": rows["source"].map(PERSON_CHANNELS), "campaign": rows["campaign"],
                         "source": rows["source"], "at": rows["record_ts"]})


def _event_touches(wh: Warehouse) -> pd.DataFrame:
    cols = ["source_record_id", "event_type", "occurred_at", "email", "crm_contact_id", "anonymous_id", "campaign",
            "_partition"]
    frames = []
    for source in ("behaviour_events", *ENGAGEMENT_SOURCES):
        t = raw_table(source, ENTITIES["behaviour_event"])
        if tables_present(wh, [t]):
            ev = wh.read_select(sa.select(*[t.c[c] for c in cols]).where(t.c.event_type.in_(list(EVENT_CHANNELS))))
            frames.append(ev.assign(_source=source))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    events = pd.concat(frames, ignore_index=True)
    events = events.sort_values("_partition").drop_duplicates(["_source", "source_record_id"], keep="last")
    by_email, by_crm = identity_maps(wh)
    events["golden_id"] = attribute_events(events, by_email, by_crm)
    events = events.dropna(subset=["golden_id"])
    return pd.DataFrame({"touch_key": "event:" + events["_source"] + ":" + events["source_record_id"].astype(str),
                         "golden_id": events["golden_id"], "channel": events["event_type"].map(EVENT_CHANNELS),
                         "campaign": events["campaign"], "source": events["_source"], "detail": events["event_type"],
                         "at": events["occurred_at"]})


def _print_touches(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [PRINT_LISTS, PRINT_RECIPIENTS]):
        return pd.DataFrame(columns=COLUMNS)
    pl, r = PRINT_LISTS, PRINT_RECIPIENTS
    rows = wh.read_select(sa.select(r.c.list_id, r.c.golden_id, pl.c.campaign, pl.c.released_at)
                          .join(pl, pl.c.list_id == r.c.list_id)
                          .where(pl.c.status.in_(["released", "expired"]), pl.c.released_at.is_not(None)))
    return pd.DataFrame({"touch_key": "print:" + rows["list_id"] + ":" + rows["golden_id"],
                         "golden_id": rows["golden_id"], "channel": "print", "campaign": rows["campaign"],
                         "source": "print_lists", "at": rows["released_at"]})


def _sales_touches(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [ALERT_LEDGER]):
        return pd.DataFrame(columns=COLUMNS)
    a = ALERT_LEDGER
    rows = wh.read_select(sa.select(a.c.alert_key, a.c.golden_id, a.c.kind, a.c.created_at)
                          .where(a.c.golden_id.is_not(None), a.c.status.in_(["notified", "done", "failed"])))
    return pd.DataFrame({"touch_key": "sales:" + rows["alert_key"], "golden_id": rows["golden_id"], "channel": "sales",
                         "campaign": rows["kind"], "source": "alert_ledger", "at": rows["created_at"]})
