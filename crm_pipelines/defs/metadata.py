"""Small helpers for Dagster metadata: markdown tables from plain rows, never unmasked personal data."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import pandas as pd


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    return str(v).replace("|", "\\|").replace("\n", " ")[:80]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_markdown(df: pd.DataFrame) -> str:
    return markdown_table(list(df.columns), df.itertuples(index=False, name=None))
