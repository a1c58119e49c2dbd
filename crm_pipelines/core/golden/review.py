"""Steward review: decisions a data steward made about record pairs (they override the matcher on
the next run) and the review queue of pairs the matcher was unsure about."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import ACCOUNT_CROSSWALK, PERSON_CROSSWALK, REVIEW_CANDIDATES, REVIEW_QUEUE, STEWARD_DECISIONS
from ..platform.warehouse import Warehouse, replace_table
from .crosswalk import PREFIX, current_map
from .staging import now


def decisions(wh: Warehouse, entity: str) -> pd.DataFrame:
    wh.ensure_tables([STEWARD_DECISIONS])
    df = wh.read_frame(sa.select(STEWARD_DECISIONS).where(STEWARD_DECISIONS.c.entity == entity)
                       .order_by(STEWARD_DECISIONS.c.decided_at))
    # The latest decision about a pair counts.
    if df.empty:
        return df
    df["pair"] = [tuple(sorted((a, b))) for a, b in zip(df["record_a"], df["record_b"])]
    return df.drop_duplicates("pair", keep="last")


def record_decision(wh: Warehouse, entity: str, record_a: str, record_b: str, decision: str, decided_by: str,
                    note: str | None = None) -> None:
    if entity not in PREFIX:
        raise ValueError(f"entity must be one of {', '.join(PREFIX)}")
    if decision not in ("same", "different"):
        raise ValueError("decision must be 'same' or 'different'")
    wh.ensure_tables([STEWARD_DECISIONS])
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(STEWARD_DECISIONS).values(entity=entity, record_a=record_a, record_b=record_b,
                                                          decision=decision, decided_by=decided_by, decided_at=now(),
                                                          note=note))


def decision_links(dec: pd.DataFrame, position: Callable[[list], np.ndarray]) -> tuple[list, list, int]:
    """Steward decisions as must- and cannot-links between positions; ``position`` maps record keys to
    positions (-1 for a record that is gone)."""
    must, cannot, unknown = [], [], 0
    ra, rb = list(dec.get("record_a", [])), list(dec.get("record_b", []))
    positions_a, positions_b = (position(ra), position(rb)) if ra else ([], [])
    for pa, pb, d in zip(positions_a, positions_b, dec.get("decision", [])):
        pa, pb = int(pa), int(pb)
        if pa < 0 or pb < 0:
            unknown += 1
            continue
        if pa == pb:
            continue
        (must if d == "same" else cannot).append((pa, pb, "steward: same") if d == "same" else (pa, pb))
    return must, cannot, unknown


def build_review_queue(wh: Warehouse) -> pd.DataFrame:
    """Review-band pairs of the last run, minus the pairs a steward has decided, with both golden IDs."""
    wh.ensure_tables([REVIEW_CANDIDATES, REVIEW_QUEUE, PERSON_CROSSWALK, ACCOUNT_CROSSWALK, STEWARD_DECISIONS])
    cand = wh.read_select(sa.select(REVIEW_CANDIDATES))
    decided = set()
    for entity in PREFIX:
        d = decisions(wh, entity)
        decided |= {(entity, *p) for p in d.get("pair", [])}
    if len(cand):
        pair = [tuple(sorted((a, b))) for a, b in zip(cand["record_a"], cand["record_b"])]
        cand = cand[[(e, *p) not in decided for e, p in zip(cand["entity"], pair)]].copy()
        # Only the records the candidates name: two crosswalks of 13 million rows each are not read for them.
        persons = current_map(wh, PERSON_CROSSWALK, REVIEW_CANDIDATES)
        accounts = current_map(wh, ACCOUNT_CROSSWALK, REVIEW_CANDIDATES)
        lookup = {"persons": persons, "accounts": accounts}
        cand["golden_a"] = [lookup[e].get(k) for e, k in zip(cand["entity"], cand["record_a"])]
        cand["golden_b"] = [lookup[e].get(k) for e, k in zip(cand["entity"], cand["record_b"])]
        cand = cand.sort_values(["entity", "probability"], ascending=[True, False])
    replace_table(wh, REVIEW_QUEUE, cand)
    return cand

