"""The fast path's match: a few newly landed person records against the golden contacts, within seconds,
by the nightly build's blocking rules and comparisons (``config/matching.yaml``), not only by e-mail.

The nightly build fits its model over every record; a handful of new records cannot. So a new record is
linked to an existing one when one of the near-certain rules the nightly model is trained on holds
(``training_rules``: the same e-mail; phone and family name; first and family name and company), with a
name or company counted as agreeing from the first similarity band below exact (typos: "Meyer" /
"Meier", "Schmidt GmbH" / "Schmidt Maschinenbau GmbH"). A role or shared mailbox (``info@``) is no
evidence on its own. Candidates come from the warehouse by the stored columns behind the blocking keys
(e-mail, phones, CRM ID, both names' phonetic codes, mail domain with first name), so a lead is matched
without reading all person records. The nightly build decides for good; this is what the alert knows
within the minute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from ..platform.schema import PERSON_CROSSWALK, PERSON_RECORDS
from ..platform.warehouse import Warehouse, select_in, tables_present
from .matching.engine import block, comparison_levels
from .matching.mailboxes import shared_mailboxes
from .matching.settings import EntityMatchSpec
from .staging import _DERIVED_PERSON_COLUMNS, _person_keys

def candidates(wh: Warehouse, new: pd.DataFrame) -> pd.DataFrame:
    """Existing current person records that could share a blocking key with ``new``, with their golden ID."""
    if not tables_present(wh, [PERSON_RECORDS, PERSON_CROSSWALK]):
        return pd.DataFrame()
    pr, xw = PERSON_RECORDS, PERSON_CROSSWALK
    q = sa.select(pr, xw.c.golden_id).join(xw, xw.c.record_key == pr.c.record_key).where(xw.c.valid_to.is_(None))
    kps = set(new["first_kp"].dropna()) | set(new["last_kp"].dropna())
    phones = set(new["phone_e164"].dropna()) | set(new["mobile_e164"].dropna())
    domains = set(new.loc[~new["is_free_mail"].fillna(False).astype(bool), "email_domain"].dropna())
    parts = [
        select_in(wh, q, pr.c.email_norm, new["email_norm"]),
        select_in(wh, q, pr.c.phone_e164, phones), select_in(wh, q, pr.c.mobile_e164, phones),
        select_in(wh, q, pr.c.crm_contact_id, new["crm_contact_id"]),
        # Both names' phonetic codes (in either order): a frequent family name alone would bring thousands.
        select_in(wh, q.where(pr.c.first_kp.in_(sorted(kps)) if kps else sa.false()), pr.c.last_kp, kps),
        select_in(wh, q.where(pr.c.first_kp.in_(sorted(set(new["first_kp"].dropna()))) if new["first_kp"].notna().any()
                        else sa.false()), pr.c.email_domain, domains),
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    found = pd.concat(parts, ignore_index=True).drop_duplicates("record_key").reset_index(drop=True)
    found = found[~found["record_key"].isin(set(new["record_key"]))]
    if "is_free_mail" in found:
        found["is_free_mail"] = found["is_free_mail"].fillna(False).astype(bool)
    derived = [d for d in _DERIVED_PERSON_COLUMNS if d not in found.columns]
    for name, values in _person_keys(found, derived).items():
        found[name] = values
    return found.reset_index(drop=True)


def _needed_level(comp) -> int:
    """Agreement as the fast path counts it: exact for e-mail, phone, IDs, postcodes; a name or company from
    the lowest similarity band (a typo), with at most one per rule that far from exact (see below)."""
    return 1 if comp.kind == "string" and comp.thresholds else comp.top_level


def match_new_persons(wh: Warehouse, new: pd.DataFrame, spec: EntityMatchSpec) -> pd.DataFrame:
    """Per new record (``person_records`` rows) the golden contact it belongs to, if a rule holds:
    columns record_key, golden_id, rule (which training rule), agreeing (how many comparisons agreed)."""
    empty = pd.DataFrame(columns=["record_key", "golden_id", "rule", "agreeing"])
    if new.empty:
        return empty
    old = candidates(wh, new)
    if old.empty:
        return empty
    new = new.copy()
    for name, values in _person_keys(new, [d for d in _DERIVED_PERSON_COLUMNS if d not in new.columns]).items():
        new[name] = values
    cols = sorted((set(old.columns) & set(new.columns)) - {"golden_id"})
    df = pd.concat([old[cols], new[cols]], ignore_index=True)
    n_old = len(old)
    pairs = block(df, spec)
    cross = (pairs.left < n_old) != (pairs.right < n_old)
    a, b = pairs.left[cross], pairs.right[cross]
    o, n = np.where(a < n_old, a, b), np.where(a < n_old, b, a)
    if not len(o):
        return empty
    levels = comparison_levels(df, o, n, spec)
    by_name = {c.name: c for c in spec.comparisons}
    agree = {name: levels[name] >= _needed_level(by_name[name]) for name in levels}
    if "email" in agree and spec.shared_mailboxes and "email_norm" in df:
        shared = np.asarray(shared_mailboxes(df["email_norm"], df.get("first_key"), df.get("last_key"),
                                             spec.shared_mailboxes, spec.shared_mailbox_names), dtype=bool)
        agree["email"] = agree["email"] & ~shared[n]   # info@ is evidence for the nightly model, not a link here
    # Below the band next to exact ("Meier" / "Meyer"): one such comparison per rule, not two ("Stefan Möller"
    # and "Stephan Müller" at one company are two people as often as one).
    loose = {c.name: (levels[c.name] >= 1) & (levels[c.name] < c.top_level - 1)
             for c in spec.comparisons if c.kind == "string" and c.thresholds and c.name in levels}
    rule = np.full(len(o), None, dtype=object)
    for r in reversed(spec.training_rules):
        if not all(c in agree for c in r):
            continue
        holds = np.logical_and.reduce([agree[c] for c in r])
        typos = np.sum([loose[c] for c in r if c in loose], axis=0) if any(c in loose for c in r) else 0
        rule[holds & (typos <= 1)] = "+".join(r)
    count = np.sum([agree[c] for c in agree], axis=0)
    out = pd.DataFrame({"record_key": df["record_key"].to_numpy()[n], "golden_id": old["golden_id"].to_numpy()[o],
                        "rule": rule, "agreeing": count})
    out = out[out["rule"].notna()].sort_values(["record_key", "agreeing"], ascending=[True, False])
    return out.drop_duplicates("record_key").reset_index(drop=True)
