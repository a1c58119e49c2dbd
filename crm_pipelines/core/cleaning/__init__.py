"""Cleaning of the values people type: e-mails, phones, person names, addresses, company names.

Plain functions on single values (tested by table) and vectorised wrappers that work on
the distinct values of a pandas Series, because real data repeats itself a lot.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd


def map_unique(series: pd.Series, fn: Callable[[Any], Any]) -> pd.Series:
    """Applies ``fn`` once per distinct value (missing stays missing)."""
    values = series.astype(object).where(series.notna(), None)
    uniques = pd.unique(values.dropna())
    lookup = {v: fn(v) for v in uniques}
    return values.map(lookup).astype(object).where(values.notna(), None)


def on_distinct(series: pd.Series, fn: Callable[[pd.Series], Any]):
    """A column-wise cleaning function (Series -> Series or DataFrame) run on the distinct values only and spread
    back over the records: e-mails and phone numbers of a million records repeat enough to halve the work."""
    codes, uniques = pd.factorize(series)
    values = pd.Series(list(uniques) + [None], dtype=object)  # the last one stands for every missing value
    result = fn(values)
    picked = result.iloc[np.where(codes >= 0, codes, len(uniques))]
    return picked.set_axis(series.index)
