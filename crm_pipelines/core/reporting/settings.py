"""``config/reporting.yaml`` (attribution models, revenue rules, print response window) and the campaigns' costs
``config/campaigns/costs.yaml``, validated on load with errors that name file and key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..platform.configfile import ConfigError, check_keys, load_yaml, require_choices, require_mapping
from .attribution import MODELS

PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True)
class ReportingSettings:
    models: tuple[str, ...]
    economics_model: str
    half_life_days: float
    lookback_days: int
    currency: str
    exchange_rates: dict[str, float]          # currency -> value of one unit in ``currency``
    link_before_days: int
    link_after_days: int
    response_window_days: int
    source: str = ""
    sha256: str = ""                          # of the file: part of the reporting assets' code version

    def to_reporting(self, amounts: pd.Series, currencies: pd.Series) -> pd.Series:
        """Amounts in the reporting currency (a currency without a rate: NaN, never a guess)."""
        return amounts.astype(float) * currencies.fillna(self.currency).map(self.exchange_rates).astype(float)


def _number(doc, value, key: str, minimum: float, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or value < minimum:
        raise doc.error(key, f"must be a {'whole ' if integer else ''}number >= {minimum}")
    return value


def load_reporting_settings(path: str | Path) -> ReportingSettings:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("attribution", "revenue", "print_response"), required=("attribution", "revenue"))
    a = require_mapping(doc, data["attribution"], "attribution")
    check_keys(doc, a, "attribution", ("models", "economics_model", "time_decay_half_life_days", "lookback_days"),
               required=("models", "economics_model"))
    models = require_choices(doc, a["models"], "attribution.models", MODELS, "model")
    if a["economics_model"] not in models:
        raise doc.error("attribution.economics_model", f"must be one of attribution.models ({', '.join(models)})")
    r = require_mapping(doc, data["revenue"], "revenue")
    check_keys(doc, r, "revenue", ("reporting_currency", "exchange_rates", "link_window_days"),
               required=("reporting_currency", "exchange_rates"))
    currency = r["reporting_currency"]
    if not isinstance(currency, str) or not CURRENCY.match(currency):
        raise doc.error("revenue.reporting_currency", "must be an ISO 4217 code such as EUR")
    rates = require_mapping(doc, r["exchange_rates"], "revenue.exchange_rates")
    for code, rate in rates.items():
        if not CURRENCY.match(str(code)):
            raise doc.error(f"revenue.exchange_rates.{code}", "keys are ISO 4217 codes such as CHF")
        _number(doc, rate, f"revenue.exchange_rates.{code}", 1e-9)
    if rates.get(currency) != 1 and rates.get(currency) != 1.0:
        raise doc.error(f"revenue.exchange_rates.{currency}", "the reporting currency's own rate must be 1")
    window = require_mapping(doc, r.get("link_window_days") or {"before_close": 14, "after_close": 60},
                             "revenue.link_window_days")
    check_keys(doc, window, "revenue.link_window_days", ("before_close", "after_close"),
               required=("before_close", "after_close"))
    for k in ("before_close", "after_close"):
        _number(doc, window[k], f"revenue.link_window_days.{k}", 0, integer=True)
    pr = require_mapping(doc, data.get("print_response") or {"window_days": 60}, "print_response")
    check_keys(doc, pr, "print_response", ("window_days",), required=("window_days",))
    return ReportingSettings(
        models=tuple(models), economics_model=a["economics_model"],
        half_life_days=float(_number(doc, a.get("time_decay_half_life_days", 7), "attribution.time_decay_half_life_days",
                                     0.01)),
        lookback_days=int(_number(doc, a.get("lookback_days", 365), "attribution.lookback_days", 1, integer=True)),
        currency=currency, exchange_rates={str(k): float(v) for k, v in rates.items()},
        link_before_days=int(window["before_close"]), link_after_days=int(window["after_close"]),
        response_window_days=int(_number(doc, pr["window_days"], "print_response.window_days", 1, integer=True)),
        source=str(path), sha256=doc.sha256)


COST_COLUMNS = ["campaign", "channel", "period", "amount", "currency", "note"]


def load_costs(path: str | Path, settings: ReportingSettings) -> pd.DataFrame:
    """One row per cost line (campaign, channel, period ``YYYY-MM``, amount in the file's currency, and the amount
    in the reporting currency). No file: no costs (an empty frame), so ROMI and CAC stay unknown, never zero."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=[*COST_COLUMNS, "cost"])
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("currency", "costs"), required=("currency", "costs"))
    currency = data["currency"]
    if currency not in settings.exchange_rates:
        raise ConfigError(path, "currency", f"no exchange rate for {currency!r} in {Path(settings.source).name} "
                                            f"(revenue.exchange_rates)", doc.line_of("currency"))
    if not isinstance(data["costs"], list):
        raise doc.error("costs", "must be a list of cost lines {campaign, channel, period, amount}")
    rows = []
    for i, line in enumerate(data["costs"]):
        key = f"costs[{i}]"
        line = require_mapping(doc, line, key)
        check_keys(doc, line, key, ("campaign", "channel", "period", "amount", "note"),
                   required=("campaign", "channel", "period", "amount"))
        for k in ("campaign", "channel"):
            if not isinstance(line[k], str) or not line[k].strip():
                raise doc.error(f"{key}.{k}", "must be a non-empty name")
        period = str(line["period"])
        if not PERIOD.match(period):
            raise doc.error(f"{key}.period", f"must be a month YYYY-MM, got {period!r}")
        amount = _number(doc, line["amount"], f"{key}.amount", 0)
        rows.append({"campaign": line["campaign"].strip(), "channel": line["channel"].strip(), "period": period,
                     "amount": float(amount), "currency": currency, "note": str(line.get("note") or "")})
    frame = pd.DataFrame(rows, columns=COST_COLUMNS)
    frame["cost"] = frame["amount"] * settings.exchange_rates[currency]
    return frame
