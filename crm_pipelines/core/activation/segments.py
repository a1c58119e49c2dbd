"""Segments as configuration: who belongs, decided by conditions over profile, behaviour, orders and consent.

One file per segment in ``config/segments/``::

    name: hot_leads
    label: Heiße Leads
    description: Contacts sales should call now.
    owner: team:sales
    match: all                      # all (default) or any of the conditions
    conditions:
      - {field: lead.stage, in: [sql]}
      - {events: {types: [pricing_page, demo_video], within_days: 14, at_least: 1}}
      - {orders: {within_days: 365, at_most: 0}}
      - {consent: email}
    destinations:
      brevo: {list: "Heiße Leads"}
      crm: {list: "crm_pipelines: Heiße Leads"}
    size_change_bound: 0.5          # a change of more than half the size needs an acknowledgement

Conditions: ``field`` (``contact.*`` of the golden contact, ``account.*`` of its account, ``lead.score``,
``lead.stage``) with one of ``equals``, ``in``, ``not_in``, ``gte``, ``lte``, ``exists``, ``contains``, and for
dates ``within_days`` / ``older_than_days``;
``events`` (behaviour events and e-mail engagement of the given types in a window, ``at_least`` /
``at_most``); ``orders`` and ``service_requests`` (of the contact's ERP customer number or its
account's) in a window; ``consent: <channel>`` (the ledger's verdict is ``granted``).

Evaluation is a pure function of frames (:func:`evaluate`), so the same code recomputes the whole base
at night and the few contacts a new event touched within the minute (:func:`diff_members`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..platform.configfile import ConfigError, YamlDoc, check_keys, load_yaml, require_mapping

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FIELD_OPS = ("equals", "in", "not_in", "gte", "lte", "exists", "contains", "within_days", "older_than_days")
NAMESPACES = ("contact", "account", "lead")
EVENT_TYPES = ("page_view", "pricing_page", "demo_video", "whitepaper_download", "webinar_attended", "email_open",
               "email_click", "email_bounce", "unsubscribe", "email_delivered", "email_soft_bounce", "email_spam",
               "email_confirmed", "web_form_lead")
CHANNELS = ("email", "phone", "post")
DESTINATIONS = ("brevo", "crm")


@dataclass(frozen=True)
class Condition:
    kind: str                           # field | events | orders | service_requests | consent
    key: str                            # where in the file (for errors and reasons)
    field: str | None = None
    op: str | None = None
    value: Any = None
    types: tuple[str, ...] = ()
    window: timedelta | None = None
    at_least: int | None = None
    at_most: int | None = None
    channel: str | None = None

    def describe(self) -> str:
        if self.kind == "field":
            return f"{self.field} {self.op} {self.value!r}"
        if self.kind == "consent":
            return f"consent {self.channel}"
        what = "/".join(self.types) if self.types else self.kind
        bound = f">= {self.at_least}" if self.at_least is not None else f"<= {self.at_most}"
        window = f" in {_window_text(self.window)}" if self.window else ""
        return f"{what} {bound}{window}"


@dataclass(frozen=True)
class Segment:
    name: str
    label: str
    description: str
    owner: str
    conditions: tuple[Condition, ...]
    match: str = "all"
    destinations: dict = field(default_factory=dict)    # tool -> list name
    size_change_bound: float | None = None
    min_size_change: int = 20
    source: str = ""
    sha256: str = ""


def _window_text(w: timedelta) -> str:
    minutes = int(w.total_seconds() // 60)
    return f"{minutes // 1440} d" if minutes % 1440 == 0 else f"{minutes} min"


def _int(doc: YamlDoc, value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise doc.error(key, f"must be a whole number >= {minimum}, got {value!r}")
    return value


def _window(doc: YamlDoc, spec: dict, key: str) -> timedelta | None:
    if "within_days" in spec and "within_minutes" in spec:
        raise doc.error(key, "give within_days or within_minutes, not both")
    if "within_days" in spec:
        return timedelta(days=_int(doc, spec["within_days"], f"{key}.within_days", 1))
    if "within_minutes" in spec:
        return timedelta(minutes=_int(doc, spec["within_minutes"], f"{key}.within_minutes", 1))
    return None


def _condition(doc: YamlDoc, raw: Any, key: str) -> Condition:
    raw = require_mapping(doc, raw, key)
    kinds = [k for k in ("field", "events", "orders", "service_requests", "consent") if k in raw]
    if len(kinds) != 1:
        raise doc.error(key, "a condition names exactly one of field, events, orders, service_requests, consent")
    kind = kinds[0]
    if kind == "field":
        check_keys(doc, raw, key, ("field", *FIELD_OPS))
        name = raw["field"]
        if not isinstance(name, str) or name.split(".", 1)[0] not in NAMESPACES or "." not in name:
            raise doc.error(f"{key}.field", f"must be <namespace>.<column> with namespace one of {', '.join(NAMESPACES)}")
        ops = [o for o in FIELD_OPS if o in raw]
        if len(ops) != 1:
            raise doc.error(key, f"a field condition takes exactly one of {', '.join(FIELD_OPS)}")
        op, value = ops[0], raw[ops[0]]
        if op in ("in", "not_in") and not (isinstance(value, list) and value):
            raise doc.error(f"{key}.{op}", "must be a non-empty list")
        if op in ("within_days", "older_than_days"):
            value = _int(doc, value, f"{key}.{op}", 0)
        if op in ("gte", "lte") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise doc.error(f"{key}.{op}", f"must be a number, got {value!r}")
        if op == "exists" and not isinstance(value, bool):
            raise doc.error(f"{key}.{op}", "must be true or false")
        return Condition("field", key, field=name, op=op, value=tuple(value) if isinstance(value, list) else value)
    if kind == "consent":
        check_keys(doc, raw, key, ("consent",))
        if raw["consent"] not in CHANNELS:
            raise doc.error(f"{key}.consent", f"must be one of {', '.join(CHANNELS)}")
        return Condition("consent", key, channel=raw["consent"])
    check_keys(doc, raw, key, (kind,))
    spec = require_mapping(doc, raw[kind], f"{key}.{kind}")
    allowed = ("within_days", "within_minutes", "at_least", "at_most") + (("types",) if kind == "events" else ())
    check_keys(doc, spec, f"{key}.{kind}", allowed)
    types: tuple[str, ...] = ()
    if kind == "events":
        raw_types = spec.get("types")
        if not isinstance(raw_types, list) or not raw_types:
            raise doc.error(f"{key}.events.types", "must be a non-empty list of event types")
        for i, t in enumerate(raw_types):
            if t not in EVENT_TYPES:
                raise doc.error(f"{key}.events.types[{i}]", f"unknown event type {t!r}; known: {', '.join(EVENT_TYPES)}")
        types = tuple(raw_types)
    if ("at_least" in spec) == ("at_most" in spec):
        raise doc.error(f"{key}.{kind}", "give at_least or at_most (one of them)")
    at_least = _int(doc, spec["at_least"], f"{key}.{kind}.at_least", 1) if "at_least" in spec else None
    at_most = _int(doc, spec["at_most"], f"{key}.{kind}.at_most", 0) if "at_most" in spec else None
    return Condition(kind, key, types=types, window=_window(doc, spec, f"{key}.{kind}"), at_least=at_least, at_most=at_most)


def load_segment(path: str | Path) -> Segment:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("name", "label", "description", "owner", "match", "conditions", "destinations",
                               "size_change_bound", "min_size_change"), required=("name", "description", "conditions"))
    name = data["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise doc.error("name", "must be lower case letters, digits and _ (it names tables' rows and lists)")
    if Path(path).stem != name:
        raise doc.error("name", f"must equal the file name ({Path(path).stem!r}), so one name finds one file")
    match = data.get("match", "all")
    if match not in ("all", "any"):
        raise doc.error("match", "must be all or any")
    raw_conditions = data["conditions"]
    if not isinstance(raw_conditions, list) or not raw_conditions:
        raise doc.error("conditions", "must be a non-empty list")
    conditions = tuple(_condition(doc, c, f"conditions[{i}]") for i, c in enumerate(raw_conditions))
    destinations = {}
    for tool, spec in (require_mapping(doc, data.get("destinations") or {}, "destinations")).items():
        if tool not in DESTINATIONS:
            raise doc.error(f"destinations.{tool}", f"unknown destination; known: {', '.join(DESTINATIONS)}")
        spec = require_mapping(doc, spec, f"destinations.{tool}")
        check_keys(doc, spec, f"destinations.{tool}", ("list",), required=("list",))
        if not isinstance(spec["list"], str) or not spec["list"].strip():
            raise doc.error(f"destinations.{tool}.list", "must be a list name")
        destinations[tool] = spec["list"]
    bound = data.get("size_change_bound")
    if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0):
        raise doc.error("size_change_bound", "must be a share > 0 (0.5 = half the size)")
    return Segment(name=name, label=str(data.get("label") or name), description=str(data["description"]),
                   owner=str(data.get("owner") or "team:marketing-ops"), conditions=conditions, match=match,
                   destinations=destinations, size_change_bound=float(bound) if bound is not None else None,
                   min_size_change=_int(doc, data.get("min_size_change", 20), "min_size_change"),
                   source=str(path), sha256=doc.sha256)


def load_segments(folder: str | Path) -> dict[str, Segment]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(folder, "", "segments folder does not exist")
    return {s.name: s for s in (load_segment(p) for p in sorted(folder.glob("*.yaml")))}


# ---------------------------------------------------------------------------- evaluation

@dataclass
class SegmentInputs:
    """Everything the conditions read, for the contacts being evaluated.

    ``profile``: indexed by golden_id, columns ``contact.*``, ``account.*``, ``lead.score``, ``lead.stage``;
    ``events``: golden_id, event_type, occurred_at (UTC); ``orders``: golden_id, order_date;
    ``service_requests``: golden_id, created_at.
    """
    profile: pd.DataFrame
    events: pd.DataFrame
    orders: pd.DataFrame
    service_requests: pd.DataFrame


def _count_in_window(frame: pd.DataFrame, ts_col: str, ids: pd.Index, now: datetime, window: timedelta | None,
                     types: tuple[str, ...] = ()) -> pd.Series:
    f = frame
    if types:
        f = f[f["event_type"].isin(types)]
    if window is not None and len(f):
        ts = pd.to_datetime(f[ts_col], utc=True, format="mixed")
        f = f[(ts >= pd.Timestamp(now - window)) & (ts <= pd.Timestamp(now))]
    return f.groupby("golden_id").size().reindex(ids, fill_value=0)


def condition_mask(c: Condition, inputs: SegmentInputs, now: datetime) -> pd.Series:
    profile = inputs.profile
    ids = profile.index
    if c.kind == "consent":
        col = f"contact.{c.channel}_consent"
        return (profile[col] == "granted") if col in profile else pd.Series(False, index=ids)
    if c.kind == "field":
        if c.field not in profile:
            return pd.Series(c.op == "exists" and c.value is False, index=ids)
        s = profile[c.field]
        if c.op == "exists":
            present = s.notna() & (s.astype(str).str.strip() != "")
            return present if c.value else ~present
        if c.op in ("within_days", "older_than_days"):
            ts = pd.to_datetime(s, utc=True, errors="coerce", format="mixed")
            edge = pd.Timestamp(now) - pd.Timedelta(days=c.value)
            return ((ts >= edge) if c.op == "within_days" else (ts < edge)).fillna(False).astype(bool)
        if c.op in ("gte", "lte"):
            num = pd.to_numeric(s, errors="coerce")
            return (num >= c.value) if c.op == "gte" else (num <= c.value)
        text = s.astype(object).where(s.notna(), None)
        if c.op == "equals":
            return text.map(lambda v: v is not None and str(v) == str(c.value)).astype(bool)
        if c.op == "in":
            allowed = {str(v) for v in c.value}
            return text.map(lambda v: v is not None and str(v) in allowed).astype(bool)
        if c.op == "not_in":
            barred = {str(v) for v in c.value}
            return text.map(lambda v: v is None or str(v) not in barred).astype(bool)
        return text.map(lambda v: v is not None and str(c.value).lower() in str(v).lower()).astype(bool)
    frame, ts_col = {"events": (inputs.events, "occurred_at"), "orders": (inputs.orders, "order_date"),
                     "service_requests": (inputs.service_requests, "created_at")}[c.kind]
    counts = _count_in_window(frame, ts_col, ids, now, c.window, c.types)
    return (counts >= c.at_least) if c.at_least is not None else (counts <= c.at_most)


def evaluate(segment: Segment, inputs: SegmentInputs, now: datetime) -> pd.DataFrame:
    """Per evaluated contact: ``member`` (bool) and ``reason`` (which conditions held, or the first that failed)."""
    ids = inputs.profile.index
    masks = [condition_mask(c, inputs, now).reindex(ids, fill_value=False).astype(bool) for c in segment.conditions]
    stack = np.column_stack([m.to_numpy() for m in masks]) if masks else np.zeros((len(ids), 0), dtype=bool)
    member = stack.all(axis=1) if segment.match == "all" else stack.any(axis=1)
    held = "; ".join(c.describe() for c in segment.conditions)
    reasons = np.full(len(ids), held if segment.match == "all" else "", dtype=object)
    for k in range(len(segment.conditions) - 1, -1, -1):
        c = segment.conditions[k]
        if segment.match == "all":
            reasons[~stack[:, k]] = f"not: {c.describe()}"
        else:
            reasons[stack[:, k]] = c.describe()
    if segment.match == "any":
        reasons[~member] = "none of the conditions"
    return pd.DataFrame({"member": member, "reason": reasons}, index=ids)


@dataclass
class MemberDiff:
    entered: pd.DataFrame          # segment, golden_id, reason
    left: pd.DataFrame             # segment, golden_id, reason
    members: pd.DataFrame          # the membership after: segment, golden_id, since, reason


def diff_members(segment: Segment, result: pd.DataFrame, current: pd.DataFrame, now: datetime,
                 evaluated_all: bool) -> MemberDiff:
    """``current``: the segment's members before (golden_id, since, reason). ``result`` from :func:`evaluate`
    over some contacts; with ``evaluated_all``, members not evaluated (gone: erased or merged away) leave too."""
    current = current.set_index("golden_id") if "golden_id" in current.columns else current
    now_members = result[result["member"]]
    entered_ids = now_members.index.difference(current.index)
    evaluated = result.index
    stale = current.index.difference(evaluated) if evaluated_all else pd.Index([])
    left_ids = current.index.intersection(result.index[~result["member"]]).union(stale)
    entered = pd.DataFrame({"segment": segment.name, "golden_id": entered_ids.astype(str),
                            "reason": now_members.loc[entered_ids, "reason"].to_numpy()})
    left_reason = result["reason"].reindex(left_ids).fillna("contact no longer in the golden records")
    left = pd.DataFrame({"segment": segment.name, "golden_id": left_ids.astype(str), "reason": left_reason.to_numpy()})
    kept = current.drop(index=left_ids)
    added = pd.DataFrame({"since": pd.Timestamp(now), "reason": entered["reason"].to_numpy()}, index=entered_ids)
    members = pd.concat([kept[["since", "reason"]], added]) if len(kept) else added
    members = members.rename_axis("golden_id").reset_index()
    members.insert(0, "segment", segment.name)
    return MemberDiff(entered, left, members)


def reason_json(segment: Segment) -> str:
    return json.dumps([c.describe() for c in segment.conditions], ensure_ascii=False)
