"""The reporting group in Dagster: the closed loop from touches to revenue (docs/reporting.md).

    CRM deals + pipelines ----------------------> reporting/deals
    raw/erp_orders + golden accounts + deals ---> reporting/revenue
    sources, events, print lists, hand-offs ----> reporting/touchpoints
    scores, hand-offs, deals, touchpoints ------> reporting/funnel
    touchpoints + revenue + deals --------------> reporting/attribution -> reporting/campaign_economics

Thin: the work is in ``core/reporting/`` (deals, revenue, touchpoints, funnel, attribution, economics). Charts are
drawn with matplotlib into the assets' metadata; the tables are in ``marts``.
"""


import hashlib
from pathlib import Path

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from ..core.platform.chart import funnel_png, grouped_bar_png, line_chart_png, markdown_image
from ..core.platform.schema import (ATTRIBUTION, CAMPAIGN_ECONOMICS, DEAL_STAGE_TIMES, FUNNEL, GOLDEN_CONTACTS,
                                    LEAD_RESPONSE, PRINT_RESPONSE, REVENUE_LINES, TOUCHPOINTS)
from ..core.platform.warehouse import Warehouse, replace_table, tables_present
from ..core.print.rules import COSTS_FILE
from ..core.reporting.deals import pull_deals
from ..core.reporting.economics import (economics, journey_uplift, journeys, print_response, run_attribution,
                                        segment_members)
from ..core.reporting.funnel import STAGES, funnel_facts, funnel_table, response_times, stage_times
from ..core.reporting.revenue import COLUMNS as REVENUE_COLUMNS
from ..core.reporting.revenue import load_deals, no_rate, revenue_lines
from ..core.reporting.settings import load_costs, load_reporting_settings
from ..core.reporting.touchpoints import COLUMNS as TOUCH_COLUMNS
from ..core.reporting.touchpoints import build_touchpoints
from ..core.scoring.handoff import load_territories
from .crm import sync_settings
from .golden import ACCOUNTS_KEY, CONTACTS_KEY
from .metadata import frame_markdown
from .resources import CrmResource, WarehouseResource
from .scoring import ALERTS_KEY, SCORES_KEY
from .sources import raw_asset_key

GROUP = "reporting"
OWNERS = ["team:marketing-ops", "team:sales-ops"]
DEALS_KEY = dg.AssetKey([GROUP, "deals"])
REVENUE_KEY = dg.AssetKey([GROUP, "revenue"])
TOUCHPOINTS_KEY = dg.AssetKey([GROUP, "touchpoints"])
FUNNEL_KEY = dg.AssetKey([GROUP, "funnel"])
ATTRIBUTION_KEY = dg.AssetKey([GROUP, "attribution"])
ECONOMICS_KEY = dg.AssetKey([GROUP, "campaign_economics"])
STAGE_LABELS = {"lead": "Lead", "mql": "MQL", "sql": "SQL", "opportunity": "Opportunity", "closed_won": "Closed-won"}


class DealPullConfig(dg.Config):
    full: bool = False
    """Read every deal again (after a change of the deal properties read), not only those changed since the last pull."""


def _money(v) -> float:
    return round(float(v), 2) if pd.notna(v) else -1.0


def _read(wh: Warehouse, query: sa.Select, table: sa.Table, empty_columns: list[str], moment: str) -> pd.DataFrame:
    """A reporting input, its moment column as UTC timestamps; an empty frame before the table exists."""
    if not tables_present(wh, [table]):
        return pd.DataFrame(columns=empty_columns)
    frame = wh.read_select(query)
    frame[moment] = pd.to_datetime(frame[moment], utc=True)
    return frame


def _contacts(wh: Warehouse) -> pd.DataFrame:
    g = GOLDEN_CONTACTS
    return _read(wh, sa.select(g.c.golden_id, g.c.account_id, g.c.first_seen_at.label("lead_at")), g,
                 ["golden_id", "account_id", "lead_at"], "lead_at")


def _touchpoints(wh: Warehouse) -> pd.DataFrame:
    return _read(wh, sa.select(TOUCHPOINTS), TOUCHPOINTS, TOUCH_COLUMNS, "at")


def _revenue(wh: Warehouse) -> pd.DataFrame:
    return _read(wh, sa.select(REVENUE_LINES), REVENUE_LINES, REVENUE_COLUMNS, "booked_at")


def build_reporting_defs(config_dir: Path) -> dg.Definitions:
    config_dir = Path(config_dir)
    settings = load_reporting_settings(config_dir / "reporting.yaml")
    costs = load_costs(config_dir / "campaigns" / COSTS_FILE, settings)
    territories = load_territories(config_dir / "territories.yaml")
    sync = sync_settings(config_dir)
    version = f"reporting-1-{settings.sha256[:12]}"

    @dg.asset(key=DEALS_KEY, group_name=GROUP, owners=OWNERS, kinds={"hubspot", "sql"},
              description="Deals from the CRM, pulled incrementally (the first pull pages through all, then the search "
                          "on hs_lastmodifieddate since the watermark), with the dealstage history, the associated "
                          "contacts and companies and the pipeline's stages. Tables `staging.crm_deals`, "
                          "`crm_deal_stages`, `crm_deal_links`; unreadable values quarantined (source crm_deals).")
    def deals(context: dg.AssetExecutionContext, config: DealPullConfig, warehouse: WarehouseResource,
              crm: CrmResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        why_not = crm.unavailable()
        if why_not:
            context.log.warning(f"no deals pulled: {why_not}")
            return dg.MaterializeResult(metadata={"pulled": 0, "skipped": why_not})
        connector = crm.connector(sync)
        report = pull_deals(wh, connector, context.run.run_id, full=config.full)
        d = load_deals(wh).deals
        by_stage = d["stage_label"].fillna(d["stage"]).value_counts() if len(d) else pd.Series(dtype=int)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(d), "read": report.read, "loaded": report.loaded,
            "quarantined": report.quarantined, "stage_changes": report.stage_changes, "links": report.links,
            "full_pull": report.full, "requests": connector.stats.requests, "throttled": connector.stats.throttled,
            "open": int((~d["is_closed"].fillna(False).astype(bool)).sum()) if len(d) else 0,
            "won": int(d["is_won"].fillna(False).astype(bool).sum()) if len(d) else 0,
            "deals_by_stage": dg.MetadataValue.md(frame_markdown(by_stage.rename("deals").reset_index())),
        })

    @dg.asset(key=REVENUE_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
              deps=[raw_asset_key("erp_orders"), ACCOUNTS_KEY, CONTACTS_KEY, DEALS_KEY],
              description="Revenue (order intake) per golden account and contact: ERP order lines not cancelled, net "
                          f"in {settings.currency}, linked to deals (the deal names the order, else a won deal of the "
                          "account closed near the order date, else account revenue); a won deal without an order "
                          "counts with its amount. Table `marts.revenue_lines`.")
    def revenue(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        lines = revenue_lines(wh, settings)
        replace_table(wh, REVENUE_LINES, lines)
        by_month = lines.assign(month=lines["booked_at"].dt.strftime("%Y-%m")).groupby(["month", "link"])["net"].sum() \
            .unstack(fill_value=0.0).sort_index().tail(12) if len(lines) else pd.DataFrame()
        chart = {}
        if len(by_month):
            chart["chart"] = dg.MetadataValue.md(markdown_image(grouped_bar_png(
                f"Revenue per month by link ({settings.currency})", list(by_month.index),
                {c: by_month[c].tolist() for c in by_month.columns}), "revenue per month"))
        link = lines.groupby("link")["net"].sum() if len(lines) else pd.Series(dtype=float)
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(lines), "currency": settings.currency,
            "revenue_total": _money(lines["net"].sum()) if len(lines) else 0.0,
            **{f"revenue_{k}": _money(v) for k, v in link.items()},
            "order_lines": int((lines["kind"] == "order").sum()) if len(lines) else 0,
            "won_deals_without_order": int((lines["kind"] == "deal").sum()) if len(lines) else 0,
            "without_exchange_rate": no_rate(lines),
            "accounts_with_revenue": int(lines["account_id"].nunique()) if len(lines) else 0,
            **chart,
        })

    @dg.asset(key=TOUCHPOINTS_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"},
              deps=[CONTACTS_KEY, raw_asset_key("behaviour_events"), ALERTS_KEY],
              description="One table of touches across every channel: web (UTM campaign), web forms, trade fairs, "
                          "newsletters, e-mail engagement, released print lists (on the drop date), service requests, "
                          "sales hand-offs. Table `marts.touchpoints`.")
    def touchpoints(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        t = build_touchpoints(wh)
        replace_table(wh, TOUCHPOINTS, t)
        per = t["channel"].value_counts() if len(t) else pd.Series(dtype=int)
        chart = {}
        if len(per):
            chart["chart"] = dg.MetadataValue.md(markdown_image(grouped_bar_png(
                "Touches per channel", list(per.index), {"touches": per.tolist()}), "touches per channel"))
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(t), "contacts_touched": int(t["golden_id"].nunique()) if len(t) else 0,
            "by_channel": dg.MetadataValue.json({str(k): int(v) for k, v in per.items()}),
            "campaigns": int(t["campaign"].nunique()) if len(t) else 0, **chart})

    @dg.asset(key=FUNNEL_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"},
              deps=[SCORES_KEY, ALERTS_KEY, DEALS_KEY, TOUCHPOINTS_KEY, CONTACTS_KEY],
              description="Lead -> MQL -> SQL -> Opportunity -> Closed-won (and lost) from facts: scores and hand-offs, "
                          "CRM deals. Counts, conversion rates, median days per stage, per month, source, campaign, "
                          "segment and territory (`marts.funnel`); time in deal stage (`marts.deal_stage_times`); lead "
                          "response time per hand-off (`marts.lead_response`).")
    def funnel(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        facts = funnel_facts(wh, load_deals(wh), _touchpoints(wh), territories)
        resp = response_times(wh, facts)
        table = funnel_table(facts, wh, resp)
        replace_table(wh, FUNNEL, table)
        stages = stage_times(wh)
        replace_table(wh, DEAL_STAGE_TIMES, stages)
        resp = resp.assign(handoff_key=resp["alert_key"].map(lambda k: hashlib.sha256(str(k).encode()).hexdigest()[:24]))
        replace_table(wh, LEAD_RESPONSE, resp)
        total = table[table["dimension"] == "all"].iloc[0] if len(table) else None
        meta: dict = {"dagster/row_count": len(table), "contacts": len(facts)}
        if total is not None:
            meta["chart"] = dg.MetadataValue.md(markdown_image(funnel_png(
                "Funnel: contacts reaching each stage", [STAGE_LABELS[s] for s in STAGES],
                [int(total[s]) for s in STAGES]), "funnel"))
            meta.update({f"total_{s}": int(total[s]) for s in (*STAGES, "closed_lost")})
            meta.update({k: float(total[k]) if pd.notna(total[k]) else -1.0
                         for k in ("mql_rate", "sql_rate", "opportunity_rate", "won_rate", "win_rate", "days_to_mql",
                                   "days_to_sql", "days_to_opportunity", "days_to_close")})
            months = table[table["dimension"] == "month"].sort_values("value").tail(12)
            if len(months):
                meta["chart_by_month"] = dg.MetadataValue.md(markdown_image(line_chart_png(
                    "Funnel by month first seen", months["value"].tolist(),
                    {STAGE_LABELS[s]: months[s].tolist() for s in STAGES}), "funnel by month"))
            for dim in ("source", "territory", "campaign", "segment"):
                part = table[table["dimension"] == dim].sort_values("lead", ascending=False).head(10)
                meta[f"by_{dim}"] = dg.MetadataValue.md(frame_markdown(
                    part[["value", *STAGES, "closed_lost", "win_rate", "median_response_minutes"]]))
        meta["median_lead_response_minutes"] = float(resp["minutes"].median()) if len(resp) else -1.0
        meta["deal_stage_days"] = dg.MetadataValue.md(frame_markdown(stages))
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=ATTRIBUTION_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
              deps=[TOUCHPOINTS_KEY, REVENUE_KEY, DEALS_KEY],
              description="Revenue of won deals and of orders credited to channels and campaigns by every model of "
                          f"config/reporting.yaml ({', '.join(settings.models)}); the Markov model's removal effects "
                          "solved exactly. Table `marts.attribution` (model, channel, campaign, revenue).")
    def attribution(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        touches = _touchpoints(wh)
        j = journeys(touches, load_deals(wh), _revenue(wh), _contacts(wh), settings)
        result = run_attribution(j, settings, by=("channel", "campaign"))
        long = result.credits.melt(id_vars=["channel", "campaign"], var_name="model", value_name="revenue")
        replace_table(wh, ATTRIBUTION, long)
        # Every channel with touches is shown, also those no revenue reached yet (a bar of 0 says so).
        per_channel = result.credits.groupby("channel")[list(settings.models)].sum().reindex(
            sorted(set(touches["channel"]) | set(result.credits["channel"])), fill_value=0.0)
        meta: dict = {"dagster/row_count": len(long), "currency": settings.currency,
                      "revenue_attributed": round(result.revenue, 2), "revenue_without_touches": round(result.unattributed, 2),
                      "journeys": result.journeys, "converted": result.converted, "touches_counted": result.touches,
                      "markov_conversion_probability": round(result.conversion_probability, 4),
                      "markov_removal_effects": dg.MetadataValue.json({k: round(v, 4) for k, v in
                                                                       result.removal_effects.items()}),
                      "by_channel": dg.MetadataValue.md(frame_markdown(per_channel.round(0).reset_index()))}
        if len(per_channel):
            meta["chart"] = dg.MetadataValue.md(markdown_image(grouped_bar_png(
                f"Revenue by channel and model ({settings.currency})", list(per_channel.index),
                {m: per_channel[m].tolist() for m in settings.models}, ylabel=settings.currency, width=960,
                values_on_bars=False), "attribution by channel and model"))
        return dg.MaterializeResult(metadata=meta)

    @dg.asset(key=ECONOMICS_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
              deps=[ATTRIBUTION_KEY],
              description=f"Per campaign, channel and segment: revenue ({settings.economics_model} model), customers, "
                          "cost (config/campaigns/costs.yaml), CAC and ROMI (`marts.campaign_economics`); the print "
                          "mailings' Rücklaufquote against their holdout (`marts.print_response`); the activation "
                          "journeys' uplift against their holdout.")
    def campaign_economics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        touches, deals_, lines = _touchpoints(wh), load_deals(wh), _revenue(wh)
        j = journeys(touches, deals_, lines, _contacts(wh), settings)
        e = economics(j, costs, settings, segment_members(wh))
        rows = pd.concat([e.campaigns.rename(columns={"campaign": "name"}).assign(level="campaign"),
                          e.channels.rename(columns={"channel": "name"}).assign(level="channel"),
                          e.segments.rename(columns={"segment": "name"}).assign(level="segment")], ignore_index=True)
        replace_table(wh, CAMPAIGN_ECONOMICS, rows)
        response = print_response(wh, touches, lines, deals_, settings)
        replace_table(wh, PRINT_RESPONSE, response)
        uplift = journey_uplift(wh)
        meta: dict = {"dagster/row_count": len(rows), "currency": settings.currency, "model": settings.economics_model,
                      "cost_total": round(float(costs["cost"].sum()), 2) if len(costs) else 0.0,
                      "campaigns": dg.MetadataValue.md(frame_markdown(e.campaigns.head(15))),
                      "channels": dg.MetadataValue.md(frame_markdown(e.channels)),
                      "segments": dg.MetadataValue.md(frame_markdown(e.segments)),
                      "print_response": dg.MetadataValue.md(frame_markdown(response.drop(columns=["list_id"]))),
                      "cost_without_touches": dg.MetadataValue.json(e.cost_without_touches)}
        if len(uplift):
            meta["journey_uplift"] = dg.MetadataValue.md(frame_markdown(
                uplift[["journey", "arm", "entered", "converted", "conversion_rate", "uplift"]]))
        if len(e.by_month):
            pivot = e.by_month.pivot_table(index="month", columns="campaign", values="revenue", aggfunc="sum",
                                           fill_value=0.0).sort_index()
            top = pivot.sum().sort_values(ascending=False).head(8).index
            meta["chart_revenue_over_time"] = dg.MetadataValue.md(markdown_image(line_chart_png(
                f"Revenue per campaign and month ({settings.economics_model}, {settings.currency})", list(pivot.index),
                {c: pivot[c].tolist() for c in top}), "revenue per campaign over time"))
        if len(response):
            labels = [f"{c} {d:%d.%m.}" for c, d in zip(response["campaign"], pd.to_datetime(response["dropped_at"]))]
            meta["chart_response"] = dg.MetadataValue.md(markdown_image(grouped_bar_png(
                "Rücklaufquote (%): mailed against holdout", labels,
                {"mailed": (response["response_rate"].fillna(0) * 100).tolist(),
                 "holdout": (response["holdout_rate"].fillna(0) * 100).tolist()}, ylabel="%"), "response rates"))
        return dg.MaterializeResult(metadata=meta)

    assets = [deals, revenue, touchpoints, funnel, attribution, campaign_economics]
    job = dg.define_asset_job("report_closed_loop", selection=[a.key for a in assets],
                              description="The closed loop: deals from the CRM, revenue, touchpoints, funnel, "
                                          "attribution, campaign economics.")
    return dg.Definitions(assets=assets, jobs=[job])
