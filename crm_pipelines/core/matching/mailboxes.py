"""Role and shared mailboxes: an address several people use is evidence, never proof of one person.

In B2B data two colleagues who write from ``info@`` or ``einkauf@`` of their company share the
address, and "the same normalised e-mail is the same person" would make them one contact. A mailbox
counts as shared when

- its name (the part before ``@``, up to the first ``.``, ``-``, ``_``, ``+`` or digit) is one of the
  configured role names (``matching.yaml``, ``shared_mailboxes.names``: info, vertrieb, einkauf ...), or
- the data itself shows it: the address is used by ``shared_mailboxes.used_by_people`` or more people
  whose first and last names are both clearly different (a changed surname alone, as after a
  marriage, is the same person; so are swapped first and last names).

Such an address is no must-link, and an exact match on it weighs like a similar mailbox, not like
the same one: the other comparisons decide.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rapidfuzz.distance import JaroWinkler

DIFFERENT = 0.8  # Jaro-Winkler below this: clearly another name (the engine's lowest name level)


def shared_mailboxes(email_norm: pd.Series, first_key: pd.Series | None, last_key: pd.Series | None,
                     names: tuple[str, ...] = (), used_by_people: int = 0) -> np.ndarray:
    """Per record: is its address a role or shared mailbox?"""
    email = email_norm.astype(object).where(email_norm.notna(), None)
    shared = np.zeros(len(email), dtype=bool)
    if names:
        local = email.str.rsplit("@", n=1).str[0]
        head = local.str.split(r"[._\-+0-9]", n=1, regex=True).str[0]
        role = head.isin(names) | local.isin(names)
        shared |= role.fillna(False).to_numpy(dtype=bool)
    if used_by_people >= 2 and first_key is not None and last_key is not None:
        people = pd.DataFrame({"email": email.to_numpy(), "first": first_key.to_numpy(), "last": last_key.to_numpy()})
        people = people[people["email"].notna() & people["last"].notna()]
        several = people.groupby("email")["last"].transform("nunique") >= 2
        found = {e for e, group in people[several].groupby("email")
                 if _distinct_people(group[["first", "last"]].drop_duplicates().itertuples(index=False)) >= used_by_people}
        if found:
            shared |= email.isin(found).to_numpy(dtype=bool)
    return shared


def _distinct_people(names) -> int:
    """How many clearly different people a list of (first, last) names holds (greedy, in order)."""
    seen: list[tuple[str, str]] = []
    for first, last in names:
        first = first if isinstance(first, str) else ""
        if not any(_same_person(first, last, f, l) for f, l in seen):
            seen.append((first, last))
    return len(seen)


def _same_person(f1: str, l1: str, f2: str, l2: str) -> bool:
    def close(a: str, b: str) -> bool:
        return not a or not b or JaroWinkler.similarity(a, b) >= DIFFERENT
    # One name close is enough (a new surname after a marriage, a nickname), and swapped names count.
    return close(f1, f2) or close(l1, l2) or (close(f1, l2) and close(l1, f2))
