"""Lead scoring: behaviour points with caps and time decay, demographic fit, negative points,
stages Lead -> MQL -> SQL, and an explanation of every score.

Plain pandas/numpy over whole columns (10 million events score in well under two minutes, see
docs/benchmarks.md). The rules are data, ``config/scoring.yaml``, validated on load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from ..cleaning.emails import FREE_MAIL_DOMAINS
from ..model import ENTITIES
from ..platform.configfile import YamlDoc, check_keys, load_yaml, require_mapping

STAGES = ("lead", "mql", "sql")
EVENT_TYPES = ENTITIES["behaviour_event"].field("event_type").allowed


@dataclass(frozen=True)
class BehaviourRule:
    name: str
    points: float
    cap: int
    half_life_days: float
    event_types: tuple[str, ...] = ()
    url: str | None = None


@dataclass(frozen=True)
class ScoringRules:
    path: Path
    sha256: str
    mql: float
    sql: float
    behaviour: tuple[BehaviourRule, ...]
    industry_points: dict[str, float]
    size_bands: tuple[tuple[int, float], ...]          # (min employees, points), first match
    region_rules: tuple[tuple[tuple[str, ...], float], ...]
    title_rules: tuple[tuple[str, float], ...]
    free_mail: float
    competitor_domains: frozenset[str]
    competitor_points: float
    unsubscribed: float
    bounced: float
    brochure_min_score: float
    brochure_stages: tuple[str, ...]
    brochure_campaign: str = "broschuere"


def load_scoring_rules(path: str | Path) -> ScoringRules:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("stages", "behaviour", "fit", "negative", "print_brochure"),
               required=("stages", "behaviour"))
    stages = require_mapping(doc, data["stages"], "stages")
    check_keys(doc, stages, "stages", ("mql", "sql"), required=("mql", "sql"))
    mql, sql = _num(doc, stages["mql"], "stages.mql"), _num(doc, stages["sql"], "stages.sql")
    if not 0 < mql < sql:
        raise doc.error("stages.sql", f"must be above stages.mql ({mql:g}) and both above 0")
    rules = []
    for name, spec in require_mapping(doc, data["behaviour"], "behaviour").items():
        key = f"behaviour.{name}"
        spec = require_mapping(doc, spec, key)
        check_keys(doc, spec, key, ("event_types", "url", "points", "cap", "half_life_days"),
                   required=("points", "cap", "half_life_days"))
        types = spec.get("event_types") or []
        if not isinstance(types, list) or any(t not in EVENT_TYPES for t in types):
            raise doc.error(f"{key}.event_types", f"must list event types of: {', '.join(EVENT_TYPES)}")
        url = spec.get("url")
        if url is not None:
            try:
                re.compile(url)
            except re.error as exc:
                raise doc.error(f"{key}.url", f"not a regular expression: {exc}") from None
        if not types and url is None:
            raise doc.error(key, "needs event_types, a url pattern, or both")
        cap = spec["cap"]
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise doc.error(f"{key}.cap", "must be a whole number of events, at least 1")
        half = _num(doc, spec["half_life_days"], f"{key}.half_life_days")
        if half <= 0:
            raise doc.error(f"{key}.half_life_days", "must be more than 0 days")
        rules.append(BehaviourRule(name, _num(doc, spec["points"], f"{key}.points"), cap, half, tuple(types), url))
    fit = require_mapping(doc, data.get("fit") or {}, "fit")
    check_keys(doc, fit, "fit", ("industry", "company_size", "region", "job_title"))
    industry = require_mapping(doc, (fit.get("industry") or {}), "fit.industry")
    check_keys(doc, industry, "fit.industry", ("points",))
    industry_points = {str(k): _num(doc, v, f"fit.industry.points.{k}")
                       for k, v in require_mapping(doc, industry.get("points") or {}, "fit.industry.points").items()}
    bands = []
    for i, band in enumerate(_list(doc, fit.get("company_size"), "fit.company_size")):
        band = require_mapping(doc, band, f"fit.company_size[{i}]")
        check_keys(doc, band, f"fit.company_size[{i}]", ("min", "points"), required=("min", "points"))
        bands.append((int(_num(doc, band["min"], f"fit.company_size[{i}].min")),
                      _num(doc, band["points"], f"fit.company_size[{i}].points")))
    regions = []
    for i, r in enumerate(_list(doc, fit.get("region"), "fit.region")):
        r = require_mapping(doc, r, f"fit.region[{i}]")
        check_keys(doc, r, f"fit.region[{i}]", ("plz_prefixes", "points"), required=("plz_prefixes", "points"))
        prefixes = r["plz_prefixes"]
        if not isinstance(prefixes, list) or not all(isinstance(p, str) and p.isdigit() for p in prefixes):
            raise doc.error(f"fit.region[{i}].plz_prefixes", "must list PLZ prefixes as quoted digits, e.g. [\"80\", \"81\"]")
        regions.append((tuple(prefixes), _num(doc, r["points"], f"fit.region[{i}].points")))
    titles = []
    for i, t in enumerate(_list(doc, fit.get("job_title"), "fit.job_title")):
        t = require_mapping(doc, t, f"fit.job_title[{i}]")
        check_keys(doc, t, f"fit.job_title[{i}]", ("pattern", "points"), required=("pattern", "points"))
        try:
            re.compile(t["pattern"])
        except (re.error, TypeError) as exc:
            raise doc.error(f"fit.job_title[{i}].pattern", f"not a regular expression: {exc}") from None
        titles.append((t["pattern"], _num(doc, t["points"], f"fit.job_title[{i}].points")))
    neg = require_mapping(doc, data.get("negative") or {}, "negative")
    check_keys(doc, neg, "negative", ("free_mail", "competitor_domains", "unsubscribed", "bounced"))
    comp = require_mapping(doc, neg.get("competitor_domains") or {}, "negative.competitor_domains")
    check_keys(doc, comp, "negative.competitor_domains", ("domains", "points"))
    for k in ("free_mail", "unsubscribed", "bounced"):
        if k in neg and _num(doc, neg[k], f"negative.{k}") > 0:
            raise doc.error(f"negative.{k}", "negative points must be 0 or below")
    brochure = require_mapping(doc, data.get("print_brochure") or {}, "print_brochure")
    check_keys(doc, brochure, "print_brochure", ("min_score", "stages", "campaign"))
    b_campaign = brochure.get("campaign", "broschuere")
    if not isinstance(b_campaign, str) or not b_campaign:
        raise doc.error("print_brochure.campaign", "must name a print campaign (config/campaigns/<name>.yaml)")
    b_stages = brochure.get("stages") or ["sql"]
    if not isinstance(b_stages, list) or any(s not in STAGES for s in b_stages):
        raise doc.error("print_brochure.stages", f"must list stages of: {', '.join(STAGES)}")
    return ScoringRules(
        Path(path), doc.sha256, mql, sql, tuple(rules), industry_points, tuple(bands), tuple(regions), tuple(titles),
        _num(doc, neg.get("free_mail", 0), "negative.free_mail"),
        frozenset(str(d).lower() for d in (comp.get("domains") or [])),
        _num(doc, comp.get("points", 0), "negative.competitor_domains.points"),
        _num(doc, neg.get("unsubscribed", 0), "negative.unsubscribed"),
        _num(doc, neg.get("bounced", 0), "negative.bounced"),
        _num(doc, brochure.get("min_score", sql), "print_brochure.min_score"), tuple(b_stages), b_campaign)


def _num(doc: YamlDoc, value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise doc.error(key, f"must be a number, got {value!r}")
    return float(value)


def _list(doc: YamlDoc, value, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise doc.error(key, "must be a list")
    return value


# ============================================================================ scoring

@dataclass
class ScoreResult:
    scores: pd.DataFrame          # golden_id, score, stage, explanation
    contributions: pd.DataFrame   # golden_id, rule, points, events
    stats: dict = field(default_factory=dict)


def attribute_events(events: pd.DataFrame, by_email: "pd.Series | dict[str, str]",
                     by_crm: "pd.Series | dict[str, str]") -> pd.Series:
    """The golden contact of each event: by e-mail, else CRM contact ID, else the anonymous ID's
    other events (a visitor who identified themselves once is recognised on every visit).
    Works on the identified rows only: most events are anonymous page views."""
    gid = pd.Series(None, index=events.index, dtype=object)
    email = events["email"]
    has = email.notna().to_numpy()
    if has.any():
        gid[has] = email[has].astype(str).str.strip().str.lower().map(by_email).to_numpy()
    if "crm_contact_id" in events.columns:
        crm = events["crm_contact_id"]
        need = (gid.isna() & crm.notna()).to_numpy()
        if need.any():
            gid[need] = crm[need].astype(str).map(by_crm).to_numpy()
    if "anonymous_id" in events.columns:
        found = gid.notna().to_numpy()
        if found.any():
            anon = events["anonymous_id"]
            stitched = pd.Series(gid[found].to_numpy(), index=anon[found].to_numpy())
            stitched = stitched[~stitched.index.duplicated(keep="last")]
            missing = ~found & anon.notna().to_numpy()
            gid[missing] = anon[missing].map(stitched).to_numpy()
    return gid.where(gid.notna(), None)


def score_contacts(events: pd.DataFrame, contacts: pd.DataFrame, accounts: pd.DataFrame, rules: ScoringRules,
                   now: datetime) -> ScoreResult:
    """``events``: golden_id, event_type, occurred_at (UTC), url. ``contacts``: golden contacts.
    ``accounts``: golden accounts (golden_id, industry, employee_count)."""
    ids = pd.Index(contacts["golden_id"].astype(str))
    parts: list[pd.DataFrame] = []
    # Column arrays of the attributed events, no copy of the frame (10 million rows are the normal case).
    code = ids.get_indexer(events["golden_id"])
    keep = code >= 0
    ev_code = code[keep]
    ev_type = events["event_type"].to_numpy(dtype=object)[keep]
    occurred = pd.to_datetime(events["occurred_at"], utc=True)
    age = (pd.Timestamp(now).tz_convert("UTC") - occurred).dt.total_seconds().to_numpy()[keep] / 86400.0
    age_days = np.clip(np.nan_to_num(age, nan=0.0), 0, None)
    if "url" in events.columns:
        url_codes, url_uniques = pd.factorize(events["url"].to_numpy(dtype=object)[keep], use_na_sentinel=True)
    else:
        url_codes, url_uniques = np.full(len(ev_code), -1), np.array([], dtype=object)
    for rule in rules.behaviour:
        mask = np.ones(len(ev_code), dtype=bool)
        if rule.event_types:
            mask &= np.isin(ev_type, rule.event_types)
        if rule.url:
            pattern = re.compile(rule.url)
            hit = np.array([bool(pattern.search(u)) for u in url_uniques], dtype=bool)
            mask &= (url_codes >= 0) & np.where(url_codes >= 0, hit[np.maximum(url_codes, 0)] if len(hit) else False,
                                                 False)
        if not mask.any():
            continue
        c, a = ev_code[mask], age_days[mask]
        # The cap counts the most recent events: order by contact, then age (youngest first).
        order = np.lexsort((a, c))
        c, a = c[order], a[order]
        starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        within = rank < rule.cap
        pts = rule.points * np.power(0.5, a[within] / rule.half_life_days)
        sums = np.bincount(c[within], weights=pts, minlength=len(ids))
        counts = np.bincount(c[within], minlength=len(ids))
        has = counts > 0
        parts.append(pd.DataFrame({"code": np.flatnonzero(has), "rule": rule.name, "points": sums[has],
                                   "events": counts[has]}))
    parts += _fit_and_negative(contacts, accounts, rules, ev_code, ev_type, len(ids))
    contributions = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["code", "rule", "points", "events"])
    total = np.bincount(contributions["code"].to_numpy(dtype=np.int64), weights=contributions["points"].to_numpy(float),
                        minlength=len(ids)) if len(contributions) else np.zeros(len(ids))
    score = np.round(np.clip(total, 0, None), 1)
    stage = np.where(score >= rules.sql, "sql", np.where(score >= rules.mql, "mql", "lead"))
    contributions["golden_id"] = ids.to_numpy()[contributions["code"].to_numpy(dtype=np.int64)]
    scores = pd.DataFrame({"golden_id": ids.to_numpy(), "score": score, "stage": stage,
                           "explanation": _explanations(contributions, len(ids))})
    contributions = contributions.drop(columns="code")
    contributions["points"] = contributions["points"].round(2)
    return ScoreResult(scores, contributions, {"events_attributed": int(keep.sum()),
                                               "events_total": int(len(events))})


def _fit_and_negative(contacts, accounts, rules, ev_code, ev_type, n) -> list[pd.DataFrame]:
    out = []

    def add(mask: np.ndarray, name: str, points: float | np.ndarray) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            pts = np.broadcast_to(np.asarray(points, dtype=float), (n,))[mask]
            out.append(pd.DataFrame({"code": np.flatnonzero(mask), "rule": name, "points": pts, "events": 0}))

    acc = accounts.set_index("golden_id") if len(accounts) else pd.DataFrame(columns=["industry", "employee_count"])
    account = contacts["account_id"].astype(object) if "account_id" in contacts.columns else pd.Series([None] * n)
    industry = account.map(acc["industry"]) if "industry" in acc.columns else pd.Series([None] * n)
    if rules.industry_points:
        pts = industry.map(rules.industry_points).astype(float).fillna(0).to_numpy()
        add(pts != 0, "fit:industry", pts)
    if rules.size_bands:
        employees = pd.to_numeric(account.map(acc["employee_count"]), errors="coerce").to_numpy(dtype=float) \
            if "employee_count" in acc.columns else np.full(n, np.nan)
        pts = np.zeros(n)
        done = np.zeros(n, dtype=bool)
        for minimum, points in sorted(rules.size_bands, reverse=True):
            hit = ~done & (employees >= minimum)
            pts[hit] = points
            done |= hit
        add(done, "fit:company_size", pts)
    plz = contacts["postal_code"].astype(object).where(contacts["postal_code"].notna(), "").astype(str).to_numpy() \
        if "postal_code" in contacts.columns else np.full(n, "")
    for i, (prefixes, points) in enumerate(rules.region_rules):
        hit = np.zeros(n, dtype=bool)
        for p in prefixes:
            hit |= np.char.startswith(plz.astype(str), p)
        add(hit, f"fit:region{'' if i == 0 else i + 1}", points)
    titles = contacts["job_title"].astype(object).where(contacts["job_title"].notna(), None) \
        if "job_title" in contacts.columns else pd.Series([None] * n)
    uniques = pd.unique(titles.dropna())
    for i, (pattern, points) in enumerate(rules.title_rules):
        rx = re.compile(pattern)
        matching = {t for t in uniques if rx.search(t)}
        add(titles.isin(matching).to_numpy(), f"fit:job_title{'' if i == 0 else i + 1}", points)
    email = contacts["email"].astype(object).where(contacts["email"].notna(), "").astype(str).str.lower() \
        if "email" in contacts.columns else pd.Series([""] * n)
    domain = email.str.rsplit("@", n=1).str[-1].where(email.str.contains("@"), "")
    add(domain.isin(FREE_MAIL_DOMAINS).to_numpy(), "negative:free_mail", rules.free_mail)
    add(domain.isin(rules.competitor_domains).to_numpy(), "negative:competitor", rules.competitor_points)
    unsub = np.zeros(n, dtype=bool)
    unsub[np.unique(ev_code[ev_type == "unsubscribe"])] = True
    if "email_consent" in contacts.columns:
        unsub |= (contacts["email_consent"] == "withdrawn").to_numpy()
    add(unsub, "negative:unsubscribed", rules.unsubscribed)
    bounced = np.zeros(n, dtype=bool)
    bounced[np.unique(ev_code[ev_type == "email_bounce"])] = True
    add(bounced, "negative:bounced", rules.bounced)
    return out


def _explanations(contributions: pd.DataFrame, n: int, top: int = 3) -> np.ndarray:
    """Per contact the strongest contributions, as JSON: [["pricing_page", 28.3, 3], ...]."""
    out = np.full(n, "[]", dtype=object)
    if contributions.empty:
        return out
    c = contributions.assign(mag=contributions["points"].abs()).sort_values(["code", "mag"], ascending=[True, False])
    c = c.groupby("code").head(top)
    for code, group in c.groupby("code", sort=False):
        out[int(code)] = json.dumps([[r, round(float(p), 1), int(e)] for r, p, e in
                                     zip(group["rule"], group["points"], group["events"])], ensure_ascii=False)
    return out


def update_stage_times(scores: pd.DataFrame, previous: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """Carries the first time each stage was reached, and ``sql_since`` (when the contact last
    entered SQL: a new crossing gets a new value, so it gets its own alert)."""
    out = scores.copy()
    prev = previous.set_index("golden_id") if len(previous) else pd.DataFrame(
        columns=["mql_at", "sql_at", "sql_since", "stage"])
    now_ts = pd.Timestamp(now).tz_convert("UTC")
    for col in ("mql_at", "sql_at", "sql_since"):
        # Microseconds whatever the store returned (SQLite may come back in whole seconds).
        out[col] = pd.to_datetime(out["golden_id"].map(prev[col]) if len(prev) else pd.Series(pd.NaT, index=out.index),
                                  utc=True).dt.as_unit("us")
    reached_mql = out["stage"].isin(["mql", "sql"])
    out.loc[reached_mql & out["mql_at"].isna(), "mql_at"] = now_ts
    is_sql = out["stage"] == "sql"
    out.loc[is_sql & out["sql_at"].isna(), "sql_at"] = now_ts
    out.loc[is_sql & out["sql_since"].isna(), "sql_since"] = now_ts
    out.loc[~is_sql, "sql_since"] = pd.NaT
    return out
