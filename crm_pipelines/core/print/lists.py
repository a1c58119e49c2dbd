"""Building a print list: the audience, who may receive post, one piece per household, the rows a
VDP tool merges, and the manifest.

Every recipient the audience names ends up either in the list or in ``excluded`` with exactly
one reason (the first that applies, in this order): ``suppressed`` (erased), ``objection``
(Art. 21 for post), ``no_postal_consent`` (a prospect without consent; customers may get post on
contract or legitimate interest), ``robinson`` (a prospect on the DDV Robinson list),
``incomplete_address``, ``household_duplicate`` (one piece per address and family name, or per
company for B2B), ``too_long:<field>`` (would not fit the template). So
``audience = listed + excluded`` holds for every list.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..cleaning import map_unique
from ..cleaning.addresses import street_key
from ..cleaning.names import name_key
from ..model import ENTITIES
from ..platform.schema import (GOLDEN_ACCOUNTS, GOLDEN_CONTACTS, LEAD_SCORES, PRINT_QUEUE, REACTIVATION_SEGMENT,
                               raw_table)
from ..platform.warehouse import Warehouse, select_in, tables_present
from ..privacy.consent import allows
from ..privacy_screen.identity import postal_value
from ..privacy_screen.suppression import Screen
from ..scoring.leads import CONTACT_COLUMNS, identity_maps, load_events
from ..scoring.rules import attribute_events
from .rules import Campaign, choose_content
from .salutation import salutations

COUNTRY_LINE = {"DE": "", "AT": "ÖSTERREICH", "CH": "SCHWEIZ"}
REASONS = ("suppressed", "objection", "no_postal_consent", "robinson", "incomplete_address", "household_duplicate",
           "holdout")
CSV_COLUMNS = ["recipient_id", "salutation_line", "name_line", "company_line", "street_line", "postal_code",
               "city_line", "country_line", "leitregion", "variant", "text", "@image"]
# Deutsche Post Dialogpost: the discount needs at least this many pieces (DOMAIN.md).
DIALOGPOST_TOTAL, DIALOGPOST_LEITREGION, DIALOGPOST_LEITBEREICH = 4000, 250, 50


@dataclass
class PrintList:
    campaign: str
    rows: pd.DataFrame                      # CSV_COLUMNS, sorted by PLZ
    excluded: dict[str, int]                # reason -> recipients
    audience: int
    variants: dict[str, int]
    golden_ids: list[str] = field(default_factory=list)   # kept inside the warehouse, never in the CSV
    prospects: int = 0                      # listed recipients without a customer relationship
    robinson_checked: bool = False          # the list was checked against a Robinson list
    holdout_ids: list[str] = field(default_factory=list)  # eligible, kept out on purpose: the response baseline


def load_robinson(path: str | Path | None) -> set[str]:
    """The DDV Robinson list as normalised postal identities: a CSV with either the columns
    ``last_name;street;house_number;postal_code`` (plain; a first_name column may be there and is
    not used) or one column ``hash`` holding sha256 of the normalised identity (hashed lists)."""
    if not path:
        return set()
    text = Path(path).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if ";" in text.splitlines()[0] else ",")
    out = set()
    for row in reader:
        if "hash" in row:
            out.add(row["hash"].strip().lower())
        else:
            value = postal_value(row.get("last_name"), row.get("street"), row.get("house_number") or None,
                                 row.get("postal_code"))
            if value:
                out.add(hashlib.sha256(value.encode()).hexdigest())
    return out


def audience_frame(wh: Warehouse, campaign: Campaign, now: datetime | None = None,
                   golden_ids: list[str] | None = None) -> pd.DataFrame:
    """Every golden contact the campaign's source names (only ``golden_ids`` if given: the single-recipient jobs),
    with the fields conditions may use."""
    now = now or datetime.now(timezone.utc)
    g = GOLDEN_CONTACTS
    if not tables_present(wh, [g]):
        return pd.DataFrame(columns=list(CONTACT_COLUMNS))
    query = sa.select(*[g.c[c] for c in CONTACT_COLUMNS], g.c.salutation, g.c.academic_title)
    if campaign.source == "reactivation_segment":
        query = query.where(g.c.golden_id.in_(sa.select(REACTIVATION_SEGMENT.c.golden_id))
                            if tables_present(wh, [REACTIVATION_SEGMENT]) else sa.false())
    elif campaign.source == "print_queue" and golden_ids is None:
        # Queued, or listed on a list that was never released (superseded by a newer build): not printed yet.
        q = PRINT_QUEUE
        query = query.where(g.c.golden_id.in_(sa.select(q.c.golden_id).where(
            q.c.status.in_(["queued", "listed"]), q.c.campaign == campaign.name))
                            if tables_present(wh, [q]) else sa.false())
    df = wh.read_frame(query) if golden_ids is None else select_in(wh, query, g.c.golden_id, golden_ids)
    plz = df["postal_code"].astype(object).where(df["postal_code"].notna(), None)
    de = (df["country"].fillna("DE") == "DE").to_numpy()
    df["plz_area"] = plz.str[:1].where(de, None)
    df["leitregion"] = plz.str[:2].where(de, None)
    df["leitbereich"] = plz.str[:3].where(de, None)
    df["is_customer"] = df["erp_customer_number"].notna()
    if tables_present(wh, [GOLDEN_ACCOUNTS]):
        acc = wh.read_frame(sa.select(GOLDEN_ACCOUNTS.c.golden_id, GOLDEN_ACCOUNTS.c.industry,
                                      GOLDEN_ACCOUNTS.c.employee_count, GOLDEN_ACCOUNTS.c.erp_customer_number))
        acc = acc.set_index("golden_id")
        df["industry"] = df["account_id"].map(acc["industry"])
        df["employee_count"] = pd.to_numeric(df["account_id"].map(acc["employee_count"]), errors="coerce")
        account_erp = df["account_id"].map(acc["erp_customer_number"])
    else:
        df["industry"], df["employee_count"], account_erp = None, np.nan, pd.Series(None, index=df.index)
    _orders(wh, df, account_erp, now)
    if tables_present(wh, [LEAD_SCORES]):
        ls = wh.read_frame(sa.select(LEAD_SCORES.c.golden_id, LEAD_SCORES.c.score, LEAD_SCORES.c.stage)).set_index("golden_id")
        df["score"], df["stage"] = df["golden_id"].map(ls["score"]), df["golden_id"].map(ls["stage"])
    else:
        df["score"], df["stage"] = np.nan, None
    df["months_since_last_activity"] = _months_since_activity(wh, df, now)
    return df


def _orders(wh: Warehouse, df: pd.DataFrame, account_erp: pd.Series, now: datetime) -> None:
    """Order history of the contact's company (its ERP customer number, or its account's)."""
    t = raw_table("erp_orders", ENTITIES["order"])
    customer = df["erp_customer_number"].where(df["erp_customer_number"].notna(), account_erp)
    if not tables_present(wh, [t]):
        df["months_since_last_order"], df["orders_12m"], df["revenue_24m"], df["revenue_24m_rank"] = np.nan, 0, 0.0, np.nan
        return
    orders = wh.read_raw_sql("SELECT source_record_id, erp_customer_number, order_date, amount, status, _partition "
                             "FROM raw.erp_orders")
    orders = orders.sort_values("_partition").drop_duplicates("source_record_id", keep="last")
    orders = orders[orders["status"] != "cancelled"]
    orders["order_date"] = pd.to_datetime(orders["order_date"], utc=True, errors="coerce")
    orders["amount"] = pd.to_numeric(orders["amount"], errors="coerce").fillna(0.0)
    now_ts = pd.Timestamp(now).tz_convert("UTC")
    last = orders.groupby("erp_customer_number")["order_date"].max()
    recent = orders[orders["order_date"] >= now_ts - pd.DateOffset(months=12)].groupby("erp_customer_number").size()
    revenue = orders[orders["order_date"] >= now_ts - pd.DateOffset(months=24)].groupby("erp_customer_number")[
        "amount"].sum()
    df["months_since_last_order"] = ((now_ts - customer.map(last)).dt.days / 30.4375).round(1)
    df["orders_12m"] = customer.map(recent).fillna(0).astype(int)
    df["revenue_24m"] = customer.map(revenue).fillna(0.0)
    rank = revenue.rank(ascending=False, method="min")
    df["revenue_24m_rank"] = customer.map(rank)


def _months_since_activity(wh: Warehouse, df: pd.DataFrame, now: datetime) -> pd.Series:
    events = load_events(wh)
    if events.empty:
        return pd.Series(np.nan, index=df.index)
    by_email, by_crm = identity_maps(wh)
    events["golden_id"] = attribute_events(events, by_email, by_crm)
    last = events.dropna(subset=["golden_id"]).groupby("golden_id")["occurred_at"].max()
    return ((pd.Timestamp(now).tz_convert("UTC") - df["golden_id"].map(last)).dt.days / 30.4375).round(1)


def build_list(frame: pd.DataFrame, campaign: Campaign, screen: Screen, robinson: set[str]) -> PrintList:
    audience = frame[_audience_mask(frame, campaign)].copy()
    n = len(audience)
    reason = pd.Series(None, index=audience.index, dtype=object)

    def mark(mask, name: str) -> None:
        nonlocal reason
        reason = reason.where(~(np.asarray(mask, dtype=bool) & reason.isna().to_numpy()), name)

    customer = audience["is_customer"].astype(bool).to_numpy() if n else np.zeros(0, bool)
    mark(screen.suppressed(audience), "suppressed")
    mark((audience["post_consent"] == "objected").to_numpy(), "objection")
    allowed = np.array([allows("post", c, b, k) for c, b, k in zip(audience["post_consent"],
                                                                   audience["post_consent_basis"], customer)], dtype=bool)
    mark(~allowed, "no_postal_consent")
    if robinson:
        keys = [postal_value(*k) for k in zip(audience["last_name"], audience["street"], audience["house_number"],
                                              audience["postal_code"], audience["country"])]
        listed = np.array([bool(k) and hashlib.sha256(k.encode()).hexdigest() in robinson for k in keys], dtype=bool)
        mark(listed & ~customer, "robinson")
    complete = audience[["last_name", "street", "postal_code", "city"]].notna().all(axis=1).to_numpy()
    if n:
        de = (audience["country"].fillna("DE") == "DE").to_numpy()
        plz_ok = audience["postal_code"].astype(str).str.fullmatch(r"\d{5}").to_numpy() | ~de
        has_number = audience["house_number"].notna().to_numpy() | audience["street"].astype(str).str.contains(
            r"\d").to_numpy()
        complete = complete & plz_ok & has_number
    mark(~complete, "incomplete_address")
    mark(_duplicates(audience, reason, campaign.dedupe), "household_duplicate")
    if campaign.holdout and n:
        mark(audience["golden_id"].map(lambda g: in_print_holdout(campaign.name, g, campaign.holdout)).to_numpy(),
             "holdout")
    holdout_ids = audience.loc[(reason == "holdout").to_numpy(), "golden_id"].astype(str).tolist()

    kept = reason.isna().to_numpy()
    keep = audience[kept]
    rows = letter_rows(keep, campaign)
    too_long = pd.Series(None, index=rows.index, dtype=object)
    for col, limit in campaign.max_lengths.items():
        if col in rows.columns:
            over = rows[col].str.len() > limit
            too_long = too_long.where(~(over & too_long.isna()), f"too_long:{col}")
    excluded = reason.dropna().value_counts().to_dict()
    for k, v in too_long.dropna().value_counts().items():
        excluded[k] = int(v)
    ok = too_long.isna().to_numpy()
    prospects = int((~customer[kept])[ok].sum()) if n else 0
    rows, golden_ids = rows[ok], keep["golden_id"].to_numpy()[ok]
    order = np.lexsort((rows["name_line"].to_numpy(dtype=str), rows["postal_code"].to_numpy(dtype=str)))
    rows, golden_ids = rows.iloc[order].reset_index(drop=True), golden_ids[order]
    variants = rows["variant"].value_counts().to_dict()
    return PrintList(campaign.name, rows, {k: int(v) for k, v in excluded.items()}, n,
                     {k: int(v) for k, v in variants.items()}, list(golden_ids), prospects, bool(robinson), holdout_ids)


def in_print_holdout(campaign: str, golden_id: str, share: float) -> bool:
    """Stable: a contact eligible for a campaign is in its holdout on every run (the campaign's name salts the hash,
    so it is not always the same people who get no post)."""
    digest = hashlib.sha256(f"print-holdout:{campaign}:{golden_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def _audience_mask(frame: pd.DataFrame, campaign: Campaign) -> np.ndarray:
    from .rules import evaluate

    return evaluate(campaign.audience, frame)


def _duplicates(audience: pd.DataFrame, reason: pd.Series, mode: str) -> np.ndarray:
    """One piece per household (street, number, PLZ, family name) or per company account: the
    contact with the highest score, then the oldest golden ID, keeps it."""
    if mode == "none" or audience.empty:
        return np.zeros(len(audience), dtype=bool)
    household = (map_unique(audience["street"], street_key).fillna("") + "|" + audience["house_number"].fillna("")
                 .astype(str).str.lower() + "|" + audience["postal_code"].fillna("").astype(str) + "|"
                 + map_unique(audience["last_name"], name_key).fillna(""))
    key = household
    if mode == "account":
        key = audience["account_id"].where(audience["account_id"].notna(), household)
    candidates = pd.DataFrame({"key": key.to_numpy(), "score": pd.to_numeric(audience["score"], errors="coerce")
                               .fillna(-1).to_numpy(), "gid": audience["golden_id"].to_numpy(),
                               "open": reason.isna().to_numpy()}, index=audience.index)
    open_ = candidates[candidates["open"]].sort_values(["key", "score", "gid"], ascending=[True, False, True])
    dup = open_.duplicated("key", keep="first")
    out = pd.Series(False, index=audience.index)
    out[open_.index[dup.to_numpy()]] = True
    return out.to_numpy()


def _one_line(s: pd.Series) -> pd.Series:
    """No line breaks or tabs inside a field: VDP tools read one record per line."""
    return s.astype(object).where(s.notna(), "").astype(str).str.replace(r"\s+", " ", regex=True).str.strip()


def letter_rows(keep: pd.DataFrame, campaign: Campaign) -> pd.DataFrame:
    """The CSV rows (CSV_COLUMNS) of the recipients kept: salutation and address lines, the chosen variant, its
    text with the tokens filled in, its image path."""
    sal, name = salutations(keep)
    chosen = choose_content(campaign, keep)
    branches = campaign.branches
    text = np.array([branches[i].text for i in chosen], dtype=object) if len(keep) else np.array([], dtype=object)
    tokens = {"salutation_line": sal, "first_name": _one_line(keep["first_name"]),
              "last_name": _one_line(keep["last_name"]), "company_name": _one_line(keep["company_name"]),
              "city": _one_line(keep["city"])}
    text_s = pd.Series(text, index=keep.index, dtype=object)
    for token, values in tokens.items():
        if text_s.str.contains("{" + token + "}", regex=False).any():
            parts = text_s.str.split("{" + token + "}", regex=False)
            text_s = pd.Series([v.join(p) for p, v in zip(parts, values)], index=keep.index, dtype=object)
    street = (_one_line(keep["street"]) + " " + _one_line(keep["house_number"])).str.strip()
    image_root = campaign.image_root.rstrip("/")
    rows = pd.DataFrame({
        "recipient_id": ["R-" + hashlib.sha256(f"{campaign.name}:{g}".encode()).hexdigest()[:12] for g in keep["golden_id"]],
        "salutation_line": _one_line(sal), "name_line": _one_line(name), "company_line": _one_line(keep["company_name"]),
        "street_line": street, "postal_code": _one_line(keep["postal_code"]), "city_line": _one_line(keep["city"]),
        "country_line": keep["country"].fillna("DE").map(COUNTRY_LINE).fillna(keep["country"].fillna("")),
        "leitregion": keep["postal_code"].astype(str).str[:2].where(keep["country"].fillna("DE") == "DE", ""),
        "variant": [branches[i].variant for i in chosen],
        "text": _one_line(text_s),
        "@image": [f"{image_root}/{branches[i].image}" if image_root else branches[i].image for i in chosen],
    }, index=keep.index)
    return rows[CSV_COLUMNS]


def csv_bytes(rows: pd.DataFrame) -> bytes:
    """UTF-8 (no BOM), ';'-separated, every field quoted where needed, a header row."""
    return rows.to_csv(sep=";", index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).encode("utf-8")


def write_csv(rows: pd.DataFrame, path: Path) -> str:
    """Writes :func:`csv_bytes`; returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = csv_bytes(rows)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def dialogpost(rows: pd.DataFrame) -> dict:
    """Which Dialogpost discount the list reaches (sorted by PLZ, one sender and format)."""
    de = rows[rows["country_line"] == ""]
    per_region = de["postal_code"].str[:2].value_counts()
    per_area = de["postal_code"].str[:3].value_counts()
    return {
        "pieces": int(len(rows)), "pieces_germany": int(len(de)),
        "total_threshold_met": bool(len(de) >= DIALOGPOST_TOTAL),
        "leitregionen_at_or_over_250": int((per_region >= DIALOGPOST_LEITREGION).sum()),
        "pieces_in_leitregionen_at_or_over_250": int(per_region[per_region >= DIALOGPOST_LEITREGION].sum()),
        "leitbereiche_at_or_over_50": int((per_area >= DIALOGPOST_LEITBEREICH).sum()),
        "pieces_in_leitbereiche_at_or_over_50": int(per_area[per_area >= DIALOGPOST_LEITBEREICH].sum()),
        "eligible": bool(len(de) >= DIALOGPOST_TOTAL or (per_region >= DIALOGPOST_LEITREGION).any()
                         or (per_area >= DIALOGPOST_LEITBEREICH).any()),
    }


def manifest(pl: PrintList, campaign: Campaign, csv_sha256: str, run_id: str, created_at: datetime,
             proof_pages: int) -> dict:
    return {
        "format": "crm_pipelines.print_manifest/1",
        "campaign": campaign.name, "description": campaign.description, "run_id": run_id,
        "created_at": created_at.isoformat(), "rules_file": campaign.path.name, "rules_sha256": campaign.sha256,
        "csv_sha256": csv_sha256, "audience": pl.audience, "recipients": int(len(pl.rows)),
        "excluded": dict(sorted(pl.excluded.items())), "variants": dict(sorted(pl.variants.items())),
        "balance_ok": pl.audience == len(pl.rows) + sum(pl.excluded.values()),
        "dialogpost": dialogpost(pl.rows), "proof_pages": proof_pages,
        "prospects": pl.prospects, "robinson_checked": pl.robinson_checked,
        "columns": CSV_COLUMNS, "encoding": "utf-8", "delimiter": ";",
    }
