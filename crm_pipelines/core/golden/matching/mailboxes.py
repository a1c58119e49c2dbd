"""Role and shared mailboxes: an address several people use is evidence, never proof of one person.

In B2B data two colleagues who write from ``info@`` or ``einkauf@`` of their company share the
address, and "the same normalised e-mail is the same person" would make them one contact. A mailbox
counts as shared when

- its name (the part before ``@``, up to the first ``.``, ``-``, ``_``, ``+`` or digit) is one of the
  configured role names (``matching.yaml``, ``shared_mailboxes.names``: info, vertrieb, einkauf ...), or
- the data itself shows it: the address is used by ``shared_mailboxes.used_by_people`` or more people
  whose first names are clearly different ("k.mueller@web.de" of Karl-Heinz and of Kordula Müller);
  a changed surname alone, as after a marriage, is the same person, and so are swapped first and last
  names; a record without a first name says nothing.

Such an address is no must-link, and an exact match on it weighs like a similar mailbox, not like
the same one: the other comparisons decide.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rapidfuzz.distance import JaroWinkler

from ...platform.frames import arrow_strings, value_codes

DIFFERENT = 0.8  # Jaro-Winkler below this: clearly another name (the engine's lowest name level)


# Records whose addresses are worked on at a time: every string step makes a column of its own (tens of
# bytes a record), and over all records at once their sum grows with the records.
CHUNK = 1_000_000


def _chunks(n: int):
    return (slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK))


def shared_mailboxes(email_norm: pd.Series, first_key: pd.Series | None, last_key: pd.Series | None,
                     names: tuple[str, ...] = (), used_by_people: int = 0,
                     codes: np.ndarray | None = None) -> np.ndarray:
    """Per record: is its address a role or shared mailbox? ``codes``: the e-mails' integer codes, when the
    caller has them."""
    email = arrow_strings(email_norm)  # string work without a Python string per e-mail
    shared = np.zeros(len(email), dtype=bool)
    if names:
        for part in _chunks(len(email)):
            local = _local(email.iloc[part])
            head = local.str.replace(r"[._\-+0-9].*$", "", regex=True)  # up to the first separator
            role = head.isin(names) | local.isin(names)
            shared[part] |= role.fillna(False).to_numpy(dtype=bool)
    if used_by_people >= 2 and first_key is not None and last_key is not None:
        # Only addresses on two records or more can be used by two people: the others stay in Arrow.
        if codes is None:
            codes = value_codes(email)
        counts = np.bincount(codes[codes >= 0])
        several = np.flatnonzero((codes >= 0) & (counts[np.maximum(codes, 0)] >= 2))
        del counts
        found = _used_by_several(codes[several], first_key.iloc[several], last_key.iloc[several], used_by_people)
        if len(found):
            is_found = np.zeros(int(codes.max()) + 1, dtype=bool)
            is_found[found] = True
            shared |= (codes >= 0) & is_found[np.maximum(codes, 0)]
    return shared


def _local(email: pd.Series) -> pd.Series:
    """The part before the last ``@`` (all of it without one)."""
    return email.str.replace(r"@[^@]*$", "", regex=True)


def _used_by_several(email: np.ndarray, first_key: pd.Series, last_key: pd.Series, used_by_people: int) -> np.ndarray:
    """The e-mail codes (``email``: an integer per record) whose records name at least ``used_by_people``
    different people. Vectorised over the pairs of distinct names per address (a million records: seconds, not
    a loop over every address), on integer codes of the names: strings only for the pairs of names compared."""
    first_codes, first_names = pd.factorize(first_key)
    last_codes, last_names = pd.factorize(last_key)
    first_name = np.asarray(first_names, dtype=object)
    last_name = np.append(np.asarray(last_names, dtype=object), "")  # code -1 (no last name) reads ""
    people = pd.DataFrame({"email": email, "first": first_codes, "last": last_codes})
    people = people[people["first"] >= 0].drop_duplicates()
    people = people[people.groupby("email")["first"].transform("size") >= 2]
    if not len(people):
        return np.empty(0, dtype=np.int64)
    people = people.reset_index(drop=True)
    people["i"] = np.arange(len(people))
    pairs = people.merge(people, on="email", suffixes=("_a", "_b"))
    pairs = pairs[pairs["i_a"] < pairs["i_b"]]
    fa, fb = (first_name[pairs[c].to_numpy()].tolist() for c in ("first_a", "first_b"))
    la, lb = (last_name[pairs[c].to_numpy()].tolist() for c in ("last_a", "last_b"))
    different = np.array([not _same_person(a, x, b, y) for a, x, b, y in zip(fa, la, fb, lb)], dtype=bool)
    candidates = np.unique(pairs["email"].to_numpy()[different])
    if used_by_people == 2:
        return candidates
    people = people[people["email"].isin(candidates)]
    named = zip(people["email"].tolist(), first_name[people["first"].to_numpy()].tolist(),
                last_name[people["last"].to_numpy()].tolist())
    by_email: dict[int, list[tuple[str, str]]] = {}
    for e, f, l in named:
        by_email.setdefault(e, []).append((f, l))
    return np.array(sorted(e for e, names in by_email.items() if _distinct_people(names) >= used_by_people),
                    dtype=np.int64)


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
        if not a or not b:
            return True
        if min(len(a), len(b)) == 1:   # an initial ("J.") fits every name it begins
            return a[0] == b[0]
        return JaroWinkler.similarity(a, b) >= DIFFERENT
    # The first name decides (a new surname after a marriage is the same person); swapped names count.
    return close(f1, f2) or (close(f1, l2) and close(l1, f2))


def numbered_apart(email_norm: pd.Series, left: np.ndarray, right: np.ndarray,
                   codes: np.ndarray | None = None) -> np.ndarray:
    """Per candidate pair: two mailboxes at one domain whose names differ only in a trailing number
    (``ellen.mueller@`` and ``ellen.mueller2@``). A company numbers the mailboxes of namesakes; one
    person has one mailbox there. The pair is two people, whatever their names and company say.

    Only the records of pairs whose e-mails differ are looked at, a block of them at a time: the mailbox
    name without its number and the domain become one 64-bit hash per record (two different ones hashing
    alike in one candidate pair: about one chance in 10^19). ``codes``: the e-mails' integer codes, when the
    caller has them (a chunk of pairs at a time)."""
    email = arrow_strings(email_norm)
    if codes is None:
        codes = value_codes(email)
    ca, cb = codes[left], codes[right]
    maybe = np.flatnonzero((ca >= 0) & (cb >= 0) & (ca != cb))
    del ca, cb
    out = np.zeros(len(left), dtype=bool)
    if not len(maybe):
        return out
    records = np.unique(np.concatenate([left[maybe], right[maybe]]))
    stem_hash = np.zeros(len(records), dtype=np.uint64)
    has_stem = np.zeros(len(records), dtype=bool)
    numbered = np.zeros(len(records), dtype=bool)
    for part in _chunks(len(records)):
        mail = email.iloc[records[part]]
        local = _local(mail)
        domain = mail.str.replace(r"^.*@", "", regex=True).where(mail.str.contains("@", regex=False).fillna(False))
        stem = local.str.replace(r"[0-9]+$", "", regex=True)
        numbered[part] = local.str.contains(r"[0-9]$", regex=True).fillna(False).to_numpy(dtype=bool)
        key = (stem.where((stem.str.len() > 0).fillna(False)) + "@" + domain).astype(object)
        has_stem[part] = key.notna().to_numpy(dtype=bool)
        stem_hash[part] = pd.util.hash_array(key.fillna("").to_numpy(dtype=object))
    at_l, at_r = np.searchsorted(records, left[maybe]), np.searchsorted(records, right[maybe])
    # Different e-mails with one stem: the local parts differ (the domain is in the stem key).
    out[maybe] = (has_stem[at_l] & has_stem[at_r] & (stem_hash[at_l] == stem_hash[at_r])
                  & (numbered[at_l] | numbered[at_r]))
    return out
