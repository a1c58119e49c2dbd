"""Revenue: ERP order lines per golden account and contact, linked to the CRM's deals.

Revenue is order intake (Auftragseingang): every order line of the ERP that is not cancelled, at its net amount
(credit notes negative), on its order date, converted into the reporting currency at the rates of
``config/reporting.yaml``. The latest delivery of an order line wins.

**The link rule** (each order line to at most one deal):

1. ``crm``: a deal names the order (the rep's ``erp_order_number`` on the deal) -> that deal.
2. ``account_time``: otherwise a won deal of the order's account (the deal's associated company, or the account
   of its contacts) whose close day lies at most ``after_close`` days before the order date or ``before_close``
   days after it (``config/reporting.yaml``, ``revenue.link_window_days``) -> the deal whose close is nearest
   (ties: the deal created first).
3. ``account``: otherwise the order is the account's revenue without a deal (repeat business).

A won deal without any linked order (a new customer not yet in the ERP, an order still to come) counts with its
own amount (``kind`` ``deal``), so a won deal is revenue once: through its orders or through its amount.
Accounts come from the golden account of the order's Kundennummer, deals' accounts from the deal's associated CRM
company (or, without one, its contacts' account); a deal's contact is the golden contact of its first associated CRM
contact.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from ..golden.crosswalk import golden_ids_by
from ..model import ENTITIES
from ..platform.schema import (ACCOUNT_CROSSWALK, ACCOUNT_RECORDS, CRM_DEAL_LINKS, CRM_DEALS, GOLDEN_CONTACTS,
                               raw_table)
from ..platform.warehouse import Warehouse, tables_present
from ..scoring.leads import identity_maps
from .settings import ReportingSettings

COLUMNS = ["revenue_key", "kind", "order_id", "erp_customer_number", "account_id", "contact_id", "deal_id", "link",
           "booked_at", "amount", "currency", "net"]


@dataclass
class Deals:
    """Deals with the golden account and contacts they belong to (``contacts``: deal_id, golden_id)."""

    deals: pd.DataFrame
    contacts: pd.DataFrame


def account_maps(wh: Warehouse) -> tuple[pd.Series, pd.Series]:
    """Kundennummer -> golden account and CRM company ID -> golden account, over every record of each account."""
    by_erp, by_crm = golden_ids_by(wh, ACCOUNT_RECORDS, ACCOUNT_CROSSWALK, ("erp_customer_number", "crm_company_id"))
    return by_erp, by_crm


def load_deals(wh: Warehouse, company_to_account: pd.Series | None = None) -> Deals:
    """The pulled deals, each with its golden account and golden contacts (``company_to_account``: the CRM company
    map of :func:`account_maps`, when the caller has it already)."""
    empty = Deals(pd.DataFrame(columns=[c.name for c in CRM_DEALS.columns] + ["account_id", "contact_id"]),
                  pd.DataFrame(columns=["deal_id", "golden_id"]))
    if not tables_present(wh, [CRM_DEALS, CRM_DEAL_LINKS]):
        return empty
    wh.ensure_tables([CRM_DEALS])
    deals = wh.read_select(sa.select(CRM_DEALS))
    if deals.empty:
        return empty
    for c in ("close_date", "created_at", "modified_at"):
        deals[c] = pd.to_datetime(deals[c], utc=True)
    links = wh.read_select(sa.select(CRM_DEAL_LINKS))
    _, crm_to_golden = identity_maps(wh)
    if company_to_account is None:
        _, company_to_account = account_maps(wh)
    people = links[links["object_type"] == "contacts"].copy()
    people["golden_id"] = people["object_id"].astype(str).map(crm_to_golden)
    people = people.dropna(subset=["golden_id"]).sort_values(["deal_id", "object_id"])
    companies = links[links["object_type"] == "companies"].copy()
    companies["account_id"] = companies["object_id"].astype(str).map(company_to_account)
    account = companies.dropna(subset=["account_id"]).drop_duplicates("deal_id").set_index("deal_id")["account_id"]
    if tables_present(wh, [GOLDEN_CONTACTS]) and len(people):
        of_contact = wh.read_select(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.account_id)
                                    .where(GOLDEN_CONTACTS.c.account_id.is_not(None)))
        via_contacts = people.merge(of_contact.rename(columns={"account_id": "acc"}), on="golden_id") \
            .dropna(subset=["acc"]).drop_duplicates("deal_id").set_index("deal_id")["acc"]
        account = account.combine_first(via_contacts)
    deals["account_id"] = deals["deal_id"].map(account)
    deals["contact_id"] = deals["deal_id"].map(people.drop_duplicates("deal_id").set_index("deal_id")["golden_id"])
    return Deals(deals, people[["deal_id", "golden_id"]].drop_duplicates().reset_index(drop=True))


def load_orders(wh: Warehouse) -> pd.DataFrame:
    t = raw_table("erp_orders", ENTITIES["order"])
    cols = ["source_record_id", "erp_customer_number", "order_date", "amount", "currency", "status", "_partition"]
    if not tables_present(wh, [t]):
        return pd.DataFrame(columns=cols[:-1])
    orders = wh.read_select(sa.select(*[t.c[c] for c in cols]))
    orders = orders.sort_values("_partition", kind="stable").drop_duplicates("source_record_id", keep="last")
    # The warehouse keeps amounts as exact decimals; the report computes in floats.
    orders["amount"] = orders["amount"].map(lambda v: None if v is None else float(v)).astype(float)
    return orders.drop(columns="_partition").reset_index(drop=True)


def _order_key(values: pd.Series) -> pd.Series:
    # The ERP writes Auftragsnummern zero-padded; reps type them with or without the zeros.
    return values.astype(str).str.strip().str.lstrip("0")


def link_orders(orders: pd.DataFrame, won: pd.DataFrame, settings: ReportingSettings) -> pd.DataFrame:
    """``orders`` (source_record_id, account_id, booked_at) with ``deal_id`` and ``link`` by the module's rule;
    ``won``: the won deals (deal_id, account_id, close_date, created_at, erp_order_number)."""
    orders = orders.copy()
    orders["deal_id"], orders["link"] = None, "account"
    # 1. The deal names the order.
    named = won.dropna(subset=["erp_order_number"])
    if len(named):
        by_number = pd.Series(named["deal_id"].to_numpy(), index=_order_key(named["erp_order_number"]).to_numpy())
        by_number = by_number[~by_number.index.duplicated()]
        hit = _order_key(orders["source_record_id"]).map(by_number)
        orders.loc[hit.notna(), "deal_id"] = hit[hit.notna()]
        orders.loc[hit.notna(), "link"] = "crm"
    # 2. A won deal of the account closed near the order date.
    open_ = orders["deal_id"].isna() & orders["account_id"].notna()
    candidates = won.dropna(subset=["account_id", "close_date"])
    if open_.any() and len(candidates):
        pairs = orders.loc[open_, ["source_record_id", "account_id", "booked_at"]].merge(
            candidates[["deal_id", "account_id", "close_date", "created_at"]], on="account_id")
        days = (pairs["booked_at"] - pairs["close_date"].dt.normalize()).dt.total_seconds() / 86400
        pairs = pairs[(days >= -settings.link_before_days) & (days <= settings.link_after_days)].assign(
            distance=days.abs())
        best = pairs.sort_values(["source_record_id", "distance", "created_at", "deal_id"]).drop_duplicates(
            "source_record_id").set_index("source_record_id")["deal_id"]
        hit = orders["source_record_id"].map(best).where(open_)
        orders.loc[hit.notna(), "deal_id"] = hit[hit.notna()]
        orders.loc[hit.notna(), "link"] = "account_time"
    return orders


def revenue_lines(wh: Warehouse, settings: ReportingSettings, deals: Deals | None = None) -> pd.DataFrame:
    """One row per revenue line (see the module's description), ``net`` in the reporting currency."""
    erp_to_account, company_to_account = account_maps(wh)
    deals = deals if deals is not None else load_deals(wh, company_to_account)
    d = deals.deals
    won = d[d["is_won"].fillna(False).astype(bool)].copy()
    orders = load_orders(wh)
    orders = orders[orders["status"].fillna("") != "cancelled"].copy()
    orders["account_id"] = orders["erp_customer_number"].astype(str).map(erp_to_account)
    orders["booked_at"] = pd.to_datetime(orders["order_date"], utc=True)
    orders = link_orders(orders, won, settings)
    orders["net"] = settings.to_reporting(pd.to_numeric(orders["amount"], errors="coerce"), orders["currency"])
    contact_of = d.set_index("deal_id")["contact_id"] if len(d) else pd.Series(dtype=object)
    account_of = d.set_index("deal_id")["account_id"] if len(d) else pd.Series(dtype=object)
    orders["contact_id"] = orders["deal_id"].map(contact_of)
    orders["account_id"] = orders["account_id"].where(orders["account_id"].notna(), orders["deal_id"].map(account_of))
    order_rows = orders.assign(kind="order", order_id=orders["source_record_id"],
                               revenue_key="order:" + orders["source_record_id"].astype(str))
    # A won deal without an order counts with its own amount.
    without = won[~won["deal_id"].isin(orders["deal_id"].dropna())]
    deal_rows = pd.DataFrame({
        "revenue_key": "deal:" + without["deal_id"].astype(str), "kind": "deal", "order_id": None,
        "erp_customer_number": None, "account_id": without["account_id"], "contact_id": without["contact_id"],
        "deal_id": without["deal_id"], "link": "deal_amount", "booked_at": without["close_date"],
        "amount": without["amount"], "currency": without["currency"],
        "net": settings.to_reporting(without["amount"].astype(float), without["currency"])})
    frames = [f for f in (order_rows[COLUMNS], deal_rows[COLUMNS]) if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out["net"] = out["net"].astype(float)
    return out.sort_values(["booked_at", "revenue_key"], kind="stable").reset_index(drop=True)


def deal_revenue(lines: pd.DataFrame) -> pd.Series:
    """Per won deal: its revenue (the linked orders' net, or its own amount)."""
    linked = lines.dropna(subset=["deal_id"])
    return linked.groupby("deal_id")["net"].sum() if len(linked) else pd.Series(dtype=float)


def no_rate(lines: pd.DataFrame) -> int:
    """Revenue lines whose currency has no exchange rate (left out of every sum, never guessed)."""
    return int(lines["net"].isna().sum()) if len(lines) else 0

