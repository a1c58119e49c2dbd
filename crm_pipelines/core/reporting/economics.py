"""What the campaigns earned: journeys and their outcomes for attribution, revenue, CAC and ROMI per campaign,
channel and segment, the print mailings' Rücklaufquote against their holdout, and the journeys' uplift.

**Journeys.** A won deal is one journey (``deal:<id>``): the touches of every contact associated with it, its lead
date the earliest first-seen of those contacts, its deal date the deal's creation, its close the close date, its
revenue the deal's (``revenue.deal_revenue``). A lost deal is a journey without revenue. An order line not linked
to a deal (repeat business) is a journey of its account (``order:<id>``): the touches of the account's contacts
since the account's order before it, closed at the end of the order day (each touch of an account belongs to the
next order at or after it). Every other touch is its contact's journey that did not convert (yet): the Markov
chain needs them. Touches count from ``lookback_days`` before the close.

**Economics** (reporting currency, the model named ``economics_model``): a campaign's *revenue* is the credit the
model gives its touches; its *customers* the same model's credit with every won deal worth 1 and repeat orders 0
(new customers, a fraction of one per touch); *cost* the sum of its lines in ``config/campaigns/costs.yaml``; ``CAC = cost / customers``;
``ROMI = (revenue - cost) / cost``. A channel sums its campaigns (and its touches without a campaign). A segment
(``marts.segment_members``) gets the credit its members' touches earn in their journeys (all touches counted) and a
campaign's cost in proportion to the campaign's touches on its members. No cost line: CAC and ROMI stay empty, never 0.

**Rücklaufquote.** A recipient of a released print list responded when, within ``print_response.window_days``
after the drop, they (or their account) ordered, got a deal, filled in a web form, were scanned at a fair, or looked
at prices or a demo video. The same is measured for the list's holdout (eligible, kept out on purpose, same
window from the same drop); the uplift is the difference of the two rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import (GOLDEN_CONTACTS, JOURNEY_ENROLLMENTS, PRINT_HOLDOUTS, PRINT_LISTS, PRINT_RECIPIENTS,
                               SEGMENT_MEMBERS)
from ..platform.warehouse import Warehouse, tables_present
from .attribution import Attribution, attribute
from .revenue import Deals, deal_revenue
from .settings import ReportingSettings

RESPONSE_EVENTS = ("pricing_page", "demo_video")
RESPONSE_SOURCES = ("web_form", "trade_fair")


@dataclass
class Journeys:
    touches: pd.DataFrame           # journey, touch_key, golden_id, channel, campaign, at
    outcomes: pd.DataFrame          # journey, revenue, closed_at, lead_at, deal_at, kind


def journeys(touches: pd.DataFrame, deals: Deals, lines: pd.DataFrame, contacts: pd.DataFrame,
             settings: ReportingSettings) -> Journeys:
    """``contacts``: golden_id, account_id, lead_at of every golden contact (see the module's description)."""
    d = deals.deals
    revenue = deal_revenue(lines)
    lead_at = contacts.set_index("golden_id")["lead_at"]
    closed = d[d["is_closed"].fillna(False).astype(bool)]
    deal_out = pd.DataFrame({"journey": "deal:" + closed["deal_id"].astype(str),
                             "revenue": closed["deal_id"].map(revenue).fillna(0.0).where(
                                 closed["is_won"].fillna(False).astype(bool), 0.0).to_numpy(),
                             "closed_at": closed["close_date"].to_numpy(), "deal_at": closed["created_at"].to_numpy(),
                             "deal_id": closed["deal_id"].to_numpy(), "kind": "deal"})
    members = deals.contacts[deals.contacts["deal_id"].isin(closed["deal_id"])].assign(
        journey=lambda f: "deal:" + f["deal_id"].astype(str))[["journey", "golden_id"]]
    deal_out["lead_at"] = deal_out["journey"].map(members.assign(l=members["golden_id"].map(lead_at))
                                                  .groupby("journey")["l"].min())
    repeat = lines[(lines["kind"] == "order") & lines["deal_id"].isna() & lines["account_id"].notna()
                   & lines["net"].notna() & lines["booked_at"].notna()]
    order_out = pd.DataFrame({"journey": "order:" + repeat["order_id"].astype(str), "revenue": repeat["net"].to_numpy(),
                              "closed_at": (repeat["booked_at"] + pd.Timedelta(hours=23, minutes=59)).to_numpy(),
                              "deal_at": pd.NaT, "deal_id": None, "kind": "order",
                              "account_id": repeat["account_id"].to_numpy()})
    order_out["lead_at"] = order_out["account_id"].map(contacts.dropna(subset=["account_id"])
                                                       .groupby("account_id")["lead_at"].min())
    outcomes = pd.concat([o for o in (deal_out, order_out) if len(o)], ignore_index=True) \
        if len(deal_out) or len(order_out) else pd.DataFrame(columns=["journey", "revenue", "closed_at", "lead_at",
                                                                      "deal_at", "deal_id", "kind", "account_id"])
    for c in ("closed_at", "lead_at", "deal_at"):
        outcomes[c] = pd.to_datetime(outcomes[c], utc=True)
    close_of = outcomes.set_index("journey")["closed_at"]
    lookback = timedelta(days=settings.lookback_days)
    t = touches[[c for c in ("touch_key", "golden_id", "channel", "campaign", "at") if c in touches.columns]]
    deal_touches = members.merge(t, on="golden_id")
    deal_touches = deal_touches[deal_touches["at"] >= deal_touches["journey"].map(close_of) - lookback]
    # A repeat order's touches are its account's since the account's order before it: each touch goes to the next
    # order at or after it (one pass, no copy of the touches per order).
    # (Index lookups, not isin: isin walks Arrow-backed strings one by one in Python.)
    rest = t[pd.Index(members["golden_id"].unique()).get_indexer(t["golden_id"]) < 0].reset_index(drop=True)
    order_touches = rest.iloc[0:0].assign(journey=pd.Series(dtype=object))
    matched = np.zeros(len(rest), dtype=bool)
    if len(order_out) and len(rest):
        # Accounts as integer codes: merge_asof matches integer keys many times faster than strings.
        codes = pd.Index(order_out["account_id"].unique())
        account_of = contacts.dropna(subset=["account_id"]).set_index("golden_id")["account_id"]
        with_account = rest.assign(_acc=codes.get_indexer(rest["golden_id"].map(account_of)), _pos=np.arange(len(rest)))
        with_account = with_account[with_account["_acc"] >= 0]
        orders_by = order_out[["journey", "closed_at"]].assign(_acc=codes.get_indexer(order_out["account_id"]))
        next_order = pd.merge_asof(with_account.sort_values("at"), orders_by.sort_values("closed_at"),
                                   left_on="at", right_on="closed_at", by="_acc", direction="forward")
        order_touches = next_order[next_order["journey"].notna()
                                   & (next_order["at"] >= next_order["closed_at"] - lookback)]
        matched[order_touches["_pos"].to_numpy()] = True
        order_touches = order_touches.drop(columns=["closed_at", "_acc", "_pos"])
    others = rest[~matched]
    others = others.assign(journey="contact:" + others["golden_id"])
    all_touches = pd.concat([f for f in (deal_touches, order_touches, others) if len(f)] or [others],
                            ignore_index=True)
    all_touches["campaign"] = all_touches["campaign"].fillna("(none)")
    return Journeys(all_touches.reset_index(drop=True), outcomes.drop(columns="account_id"))


def run_attribution(j: Journeys, settings: ReportingSettings, by: tuple[str, ...] = ("channel",)) -> Attribution:
    return attribute(j.touches, j.outcomes, by=by, models=settings.models, half_life_days=settings.half_life_days)


def _new_customers(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Every won deal worth 1, repeat orders 0: the model then credits each campaign with its share of the customers
    won (acquisition), not of the orders existing customers placed."""
    won_deal = (outcomes["kind"] == "deal") & (outcomes["revenue"] > 0)
    return outcomes.assign(revenue=won_deal.astype(float))


@dataclass
class Economics:
    campaigns: pd.DataFrame
    channels: pd.DataFrame
    segments: pd.DataFrame
    by_month: pd.DataFrame                      # campaign, month, revenue (the economics model's credit by close)
    cost_without_touches: list[str] = field(default_factory=list)   # campaigns with cost and no touch at all


def economics(j: Journeys, costs: pd.DataFrame, settings: ReportingSettings, segments: pd.DataFrame) -> Economics:
    model = settings.economics_model
    money = attribute(j.touches, j.outcomes, by=("channel", "campaign"), models=(model,),
                      half_life_days=settings.half_life_days).credits.rename(columns={model: "revenue"})
    heads = attribute(j.touches, _new_customers(j.outcomes),
                      by=("channel", "campaign"), models=(model,), half_life_days=settings.half_life_days) \
        .credits.rename(columns={model: "customers"})
    per = money.merge(heads, on=["channel", "campaign"], how="outer").fillna({"revenue": 0.0, "customers": 0.0})
    cost = costs.groupby(["campaign", "channel"], as_index=False)["cost"].sum() if len(costs) else \
        pd.DataFrame(columns=["campaign", "channel", "cost"])
    touched = set(j.touches["campaign"].dropna())
    campaigns = per.groupby("campaign", as_index=False).agg(revenue=("revenue", "sum"), customers=("customers", "sum"))
    campaigns = campaigns.merge(cost.groupby("campaign", as_index=False)["cost"].sum(), on="campaign", how="outer")
    campaigns[["revenue", "customers"]] = campaigns[["revenue", "customers"]].fillna(0.0)
    channels = per.groupby("channel", as_index=False).agg(revenue=("revenue", "sum"), customers=("customers", "sum"))
    channels = channels.merge(cost.groupby("channel", as_index=False)["cost"].sum(), on="channel", how="outer")
    channels[["revenue", "customers"]] = channels[["revenue", "customers"]].fillna(0.0)
    seg = _segment_economics(j, segments, cost, settings)
    for frame in (campaigns, channels, seg):
        _ratios(frame)
    by_month = _by_month(j, settings)
    return Economics(campaigns.sort_values("revenue", ascending=False).reset_index(drop=True),
                     channels.sort_values("revenue", ascending=False).reset_index(drop=True), seg, by_month,
                     sorted(set(cost["campaign"]) - touched))


def _ratios(frame: pd.DataFrame) -> None:
    if "cost" not in frame.columns:
        frame["cost"] = np.nan
    c = frame["cost"].astype(float)
    frame["cac"] = (c / frame["customers"].where(frame["customers"] > 0)).round(2)
    frame["romi"] = ((frame["revenue"] - c) / c.where(c > 0)).round(4)
    frame["cost"] = c.round(2)
    frame["revenue"] = frame["revenue"].astype(float).round(2)
    frame["customers"] = frame["customers"].astype(float).round(3)


def _segment_economics(j: Journeys, segments: pd.DataFrame, cost: pd.DataFrame,
                       settings: ReportingSettings) -> pd.DataFrame:
    cols = ["segment", "revenue", "customers", "cost"]
    if segments.empty or j.touches.empty:
        return pd.DataFrame(columns=cols)
    t = j.touches.merge(segments, on="golden_id")
    if t.empty:
        return pd.DataFrame(columns=cols)
    model = settings.economics_model
    # Credit is computed over every touch of a journey, then given to the contacts whose touches earned it; a
    # contact's credit counts in each segment it belongs to. (Attributing only the members' touches would hand a
    # segment the whole deal its member merely took part in.)
    by_contact = ("channel", "golden_id")
    money = attribute(j.touches, j.outcomes, by=by_contact, models=(model,),
                      half_life_days=settings.half_life_days).credits.groupby("golden_id")[model].sum()
    heads = attribute(j.touches, _new_customers(j.outcomes), by=by_contact, models=(model,),
                      half_life_days=settings.half_life_days).credits.groupby("golden_id")[model].sum()
    members = segments.assign(revenue=segments["golden_id"].map(money).fillna(0.0),
                              customers=segments["golden_id"].map(heads).fillna(0.0))
    out = members.groupby("segment")[["revenue", "customers"]].sum()
    # A campaign's cost goes to the segments in proportion to its touches on their members.
    share = t.groupby(["campaign", "segment"]).size().rename("n").reset_index()
    share["share"] = share["n"] / share["campaign"].map(j.touches.groupby("campaign").size())
    alloc = share.merge(cost.groupby("campaign", as_index=False)["cost"].sum(), on="campaign")
    out["cost"] = (alloc["share"] * alloc["cost"]).groupby(alloc["segment"]).sum()
    return out.reset_index().rename(columns={"index": "segment"})[cols]


def _by_month(j: Journeys, settings: ReportingSettings) -> pd.DataFrame:
    """The economics model's revenue per campaign and month of the close (one pass: the month is the journey's)."""
    won = j.outcomes[j.outcomes["revenue"] > 0]
    if won.empty or j.touches.empty:
        return pd.DataFrame(columns=["campaign", "month", "revenue"])
    month_of = won.set_index("journey")["closed_at"].dt.strftime("%Y-%m")
    touches = j.touches.assign(month=j.touches["journey"].map(month_of).fillna("(open)"))
    c = attribute(touches, won, by=("channel", "campaign", "month"), models=(settings.economics_model,),
                  half_life_days=settings.half_life_days).credits
    c = c[c["month"] != "(open)"]
    return c.groupby(["campaign", "month"], as_index=False)[settings.economics_model].sum().rename(
        columns={settings.economics_model: "revenue"})[["campaign", "month", "revenue"]]


def segment_members(wh: Warehouse) -> pd.DataFrame:
    if not tables_present(wh, [SEGMENT_MEMBERS]):
        return pd.DataFrame(columns=["golden_id", "segment"])
    return wh.read_select(sa.select(SEGMENT_MEMBERS.c.golden_id, SEGMENT_MEMBERS.c.segment))


# ---------------------------------------------------------------------------- print response

def print_response(wh: Warehouse, touches: pd.DataFrame, lines: pd.DataFrame, deals: Deals,
                   settings: ReportingSettings) -> pd.DataFrame:
    """Per released print list: recipients and holdout, their responders and rates, the uplift (see above)."""
    cols = ["campaign", "list_id", "dropped_at", "mailed", "mailed_responded", "holdout", "holdout_responded",
            "response_rate", "holdout_rate", "uplift"]
    if not tables_present(wh, [PRINT_LISTS, PRINT_RECIPIENTS]):
        return pd.DataFrame(columns=cols)
    wh.ensure_tables([PRINT_HOLDOUTS])
    lists = wh.read_select(sa.select(PRINT_LISTS.c.list_id, PRINT_LISTS.c.campaign, PRINT_LISTS.c.released_at)
                           .where(PRINT_LISTS.c.status == "released"))
    if lists.empty:
        return pd.DataFrame(columns=cols)
    lists["released_at"] = pd.to_datetime(lists["released_at"], utc=True)
    mailed = wh.read_select(sa.select(PRINT_RECIPIENTS.c.list_id, PRINT_RECIPIENTS.c.golden_id)
                            .where(PRINT_RECIPIENTS.c.list_id.in_(lists["list_id"].tolist())))
    held = wh.read_select(sa.select(PRINT_HOLDOUTS.c.list_id, PRINT_HOLDOUTS.c.golden_id)
                          .where(PRINT_HOLDOUTS.c.list_id.in_(lists["list_id"].tolist())))
    responses = _responses(wh, touches, lines, deals)
    window = timedelta(days=settings.response_window_days)
    rows = []
    for _, lst in lists.iterrows():
        out = {"campaign": lst["campaign"], "list_id": lst["list_id"], "dropped_at": lst["released_at"]}
        for arm, people in (("mailed", mailed), ("holdout", held)):
            ids = people.loc[people["list_id"] == lst["list_id"], "golden_id"]
            r = responses[responses["golden_id"].isin(ids) & (responses["at"] >= lst["released_at"])
                          & (responses["at"] <= lst["released_at"] + window)]
            out[arm], out[f"{arm}_responded"] = len(ids), int(r["golden_id"].nunique())
        out["response_rate"] = round(out["mailed_responded"] / out["mailed"], 4) if out["mailed"] else None
        out["holdout_rate"] = round(out["holdout_responded"] / out["holdout"], 4) if out["holdout"] else None
        out["uplift"] = None if out["response_rate"] is None or out["holdout_rate"] is None else \
            round(out["response_rate"] - out["holdout_rate"], 4)
        rows.append(out)
    return pd.DataFrame(rows, columns=cols)


def _responses(wh: Warehouse, touches: pd.DataFrame, lines: pd.DataFrame, deals: Deals) -> pd.DataFrame:
    """Moments a contact responded: forms, fair scans, price or demo pages, their account's orders, their deals."""
    frames = [touches.loc[touches["channel"].isin(RESPONSE_SOURCES) | touches["detail"].isin(RESPONSE_EVENTS),
                          ["golden_id", "at"]]] if len(touches) else []
    if tables_present(wh, [GOLDEN_CONTACTS]) and len(lines):
        people = wh.read_select(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.account_id)
                                .where(GOLDEN_CONTACTS.c.account_id.is_not(None)))
        orders = lines[lines["kind"] == "order"][["account_id", "booked_at"]].merge(people, on="account_id")
        frames.append(orders.rename(columns={"booked_at": "at"})[["golden_id", "at"]])
    if len(deals.contacts):
        dd = deals.contacts.merge(deals.deals[["deal_id", "created_at"]], on="deal_id")
        frames.append(dd.rename(columns={"created_at": "at"})[["golden_id", "at"]])
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["golden_id", "at"])
    out = pd.concat(frames, ignore_index=True)
    out["at"] = pd.to_datetime(out["at"], utc=True)
    return out


def journey_uplift(wh: Warehouse) -> pd.DataFrame:
    """Per activation journey: its arms' conversion and the treatment's uplift (``activation.journeys``)."""
    from ..activation.journeys import journey_funnel

    if not tables_present(wh, [JOURNEY_ENROLLMENTS]):
        return pd.DataFrame(columns=["journey", "arm", "entered", "converted", "conversion_rate", "uplift"])
    names = wh.read_select(sa.select(JOURNEY_ENROLLMENTS.c.journey).distinct())["journey"].tolist()
    frames = []
    for name in sorted(names):
        f = journey_funnel(wh, name)
        frames.append(f.assign(journey=name, uplift=f.attrs["uplift"]))
    if not frames:
        return pd.DataFrame(columns=["journey", "arm", "entered", "converted", "conversion_rate", "uplift"])
    return pd.concat(frames, ignore_index=True)
