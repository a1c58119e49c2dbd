"""Each golden contact's consent verdict per channel, refreshed from the consent ledger
(``core/privacy/ledger.py``) between golden builds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import GOLDEN_CONTACTS, PERSON_CROSSWALK
from ..platform.warehouse import Warehouse, tables_present
from ..privacy import consent
from ..privacy.ledger import load_consent_events


def refresh_golden_consent(wh: Warehouse) -> list[str]:
    """Re-applies the consent ledger to the golden contacts between golden builds (a consent change
    or objection arriving by webhook takes effect at once); returns the golden IDs that changed."""
    if not tables_present(wh, [GOLDEN_CONTACTS, PERSON_CROSSWALK]):
        return []
    xw = PERSON_CROSSWALK
    members = wh.read_frame(sa.select(xw.c.record_key, xw.c.golden_id).where(xw.c.valid_to.is_(None)))
    ids = pd.Index(sorted(set(members["golden_id"])))
    verdicts = consent.current(load_consent_events(wh), dict(zip(members["record_key"],
                                                                 ids.get_indexer(members["golden_id"]))), len(ids))
    verdicts["golden_id"] = ids.to_numpy()
    cols = [c for c in verdicts.columns if c != "golden_id"]
    g = GOLDEN_CONTACTS
    current = wh.read_frame(sa.select(g.c.golden_id, *[g.c[c] for c in cols]))
    merged = current.merge(verdicts, on="golden_id", suffixes=("", "_new"))
    changed = merged[np.logical_or.reduce([merged[c].fillna("") != merged[f"{c}_new"].fillna("") for c in cols])]
    with wh.engine.begin() as conn:
        for row in changed.itertuples(index=False):
            conn.execute(sa.update(g).where(g.c.golden_id == row.golden_id).values(
                **{c: getattr(row, f"{c}_new") for c in cols}))
    return list(changed["golden_id"])

