"""The matching engine: blocking, comparison levels, Fellegi-Sunter weights by EM, match probabilities.

Works on a DataFrame of cleaned records (row position = record number) and an
:class:`EntityMatchSpec`. Everything is column-wise: candidate pairs are numpy index
arrays, string similarities come from rapidfuzz's ``cpdist`` over the pairs, and the
EM runs over the distinct comparison patterns (a few thousand) rather than the pairs.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pandas as pd
from rapidfuzz import distance, fuzz, process

from ...platform.frames import arrow_strings, is_arrow_string, value_codes
from .settings import ComparisonSpec, EntityMatchSpec

NULL = -1
_SCORERS = {
    "jaro_winkler": (distance.JaroWinkler.normalized_similarity, 1.0),
    "ratio": (distance.Indel.normalized_similarity, 1.0),
    "token_set": (fuzz.token_set_ratio, 100.0),
}
_FLOOR = 1e-6


# ============================================================================ blocking

@dataclass
class CandidatePairs:
    left: np.ndarray   # record positions, left < right
    right: np.ndarray
    rule: np.ndarray   # index of the first blocking rule that produced the pair
    stats: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.left)


# A rule's columns' codes are combined into one integer key; before the key could pass this it is made dense.
KEY_SPAN = 2**62


def _key_table(df: pd.DataFrame, rule: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(record positions, keys) for a blocking rule; 'a|b' columns contribute either value. Equal keys, one block.

    Keys are integers, never strings: a column's values are coded (the alternatives of an 'a|b' column in one code
    space, so a phone in "phone" meets the same phone in "mobile") and the codes of a rule's columns combined
    arithmetically; only where the product of the columns' code ranges would pass :data:`KEY_SPAN` is the key made
    dense first (no hash table of every record's key per column: at 13 million records each held about 0.5 GB)."""
    n = len(df)
    positions = np.int32 if n < 2**31 else np.int64
    if all("|" not in col for col in rule):
        # One value per column: the key is built over every record and the records missing a column are left out
        # at the end (no frame merges, whose joins held several arrays per record).
        key: np.ndarray | None = None
        present = np.ones(n, dtype=bool)
        span = 1  # keys lie in [0, span) for the records with every column so far
        for col in rule:
            codes = value_codes(df[col])  # -1 for missing
            present &= codes >= 0
            distinct = int(codes.max()) + 1 if len(codes) else 0
            if key is None:
                key, span = codes.astype(np.int64), max(distinct, 1)
                continue
            if span * max(distinct, 1) >= KEY_SPAN:
                key = np.where(present, key, -1)
                key = np.unique(key, return_inverse=True)[1].astype(np.int64)
                span = int(key.max()) + 1
            key *= max(distinct, 1)
            key += codes
            span *= max(distinct, 1)
        pos = np.flatnonzero(present).astype(positions)
        return pos, (key[pos] if key is not None else np.empty(0, np.int64))
    base: pd.DataFrame | None = None
    for col in rule:
        alts = col.split("|")
        stacked = pd.concat([df[alt] for alt in alts], ignore_index=True) if len(alts) > 1 else df[alts[0]]
        codes = value_codes(stacked)  # -1 for missing
        distinct = int(codes.max()) + 1 if len(codes) else 0
        ok = codes >= 0
        frame = pd.DataFrame({"pos": np.tile(np.arange(n, dtype=np.int64), len(alts))[ok], "v": codes[ok].astype(np.int64)})
        if len(alts) > 1:  # a record with the same value in both alternatives counts once
            frame = frame.drop_duplicates()
        if base is None:
            base = frame.rename(columns={"v": "key"})
        else:
            # The rows where every column has a value; several alternatives explode rows.
            base = base.merge(frame, on="pos")
            base["key"] = pd.factorize(base["key"].to_numpy() * max(distinct, 1) + base["v"].to_numpy())[0]
            base = base.drop(columns="v")
    assert base is not None
    return base["pos"].to_numpy(positions), base["key"].to_numpy(np.int64)


_TRIU_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}

# Pairs made at a time within the blocks of one rule: a rule's pairs are never all held as positions.
PAIR_CHUNK = 4_000_000


def _pairs_within_blocks(df: pd.DataFrame, rule: tuple[str, ...],
                         max_block: int) -> tuple[Iterator[tuple[np.ndarray, np.ndarray]], np.ndarray, int, int]:
    """The pairs of records sharing a rule's key (:func:`_key_table`), in chunks of about :data:`PAIR_CHUNK` (an
    iterator of (a, b)), each record's block (-1 for a record without a key or in a block too large to pair:
    those make no pairs), and the number of skipped blocks and of their records. The keys are let go of as soon
    as they are sorted."""
    n = len(df)
    pos, keys = _key_table(df, rule)
    block_of = np.full(n, -1, dtype=np.int32)
    if len(pos) < 2:
        return iter(()), block_of, 0, 0
    order = np.argsort(keys)
    keys = keys[order]
    pos_s = pos[order]
    del pos, order
    first = np.empty(len(keys), dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    del keys
    starts = np.flatnonzero(first)
    del first
    sizes = np.diff(starts, append=len(pos_s))
    too_big = sizes > max_block
    big_blocks, big_records = int(too_big.sum()), int(sizes[too_big].sum())
    paired = (sizes >= 2) & ~too_big
    del too_big
    starts, sizes = starts[paired], sizes[paired]
    del paired
    # Only the blocks that make pairs are numbered: a record's block is all the later rules ask about.
    members = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes - starts, sizes)  # into pos_s
    block_of[pos_s[members]] = np.repeat(np.arange(len(starts), dtype=np.int32), sizes)
    del members

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for size in np.unique(sizes):
            group_starts = starts[sizes == size]
            if size not in _TRIU_CACHE:
                _TRIU_CACHE[size] = np.triu_indices(size, 1)
            a, b = _TRIU_CACHE[size]
            per_chunk = max(PAIR_CHUNK // len(a), 1)
            for i in range(0, len(group_starts), per_chunk):
                g = group_starts[i:i + per_chunk]
                yield pos_s[(g[:, None] + a[None, :]).ravel()], pos_s[(g[:, None] + b[None, :]).ravel()]

    return chunks(), block_of, big_blocks, big_records


def _rule_columns(rule: tuple[str, ...]) -> set[str]:
    return {alt for col in rule for alt in col.split("|")}


def _new_pairs(a: np.ndarray, b: np.ndarray, n: int, earlier_blocks: list[np.ndarray],
               earlier_pairs: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """The codes (left * n + right) of the pairs (a, b) of different records no earlier rule made, and the number
    of pairs of different records."""
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    made = len(lo)
    new = np.ones(len(lo), dtype=bool)
    for blocks in earlier_blocks:
        at = blocks[lo]
        new &= ~((at >= 0) & (at == blocks[hi]))
    code = lo[new].astype(np.int64) * n + hi[new]
    for codes in earlier_pairs:
        if len(codes):
            found = np.minimum(np.searchsorted(codes, code), len(codes) - 1)
            code = code[codes[found] != code]
    return code, made


def block(df: pd.DataFrame, spec: EntityMatchSpec,
          columns_done: Callable[[set[str]], None] | None = None) -> CandidatePairs:
    """The union of the rules' pairs, each with the first rule that made it, sorted by (left, right).
    ``columns_done`` is called after a rule with the columns no later rule reads (the caller may let go of those
    only the blocking reads: the last rules run beside a smaller frame).

    A pair an earlier rule made is left out as the rule makes it (an earlier single-column rule: the two records
    share its block; a rule of alternatives such as phone|mobile: its pairs are kept, sorted, to look up), so the
    union is never made of every rule's pairs at once and sorted for duplicates."""
    n = len(df)
    n_rules = len(spec.blocking)
    kept, stats = [], []  # kept: pair codes (left * n + right) * n_rules + rule, a chunk at a time
    earlier_blocks: list[np.ndarray] = []  # per earlier single-column rule: each record's block (-1: none)
    earlier_pairs: list[np.ndarray] = []   # per earlier rule of alternatives: its pair codes, sorted
    for r, rule in enumerate(spec.blocking):
        started = time.monotonic()
        chunks, block_of, big_blocks, big_records = _pairs_within_blocks(df, rule, spec.block_limit(rule))
        alternatives = any("|" in col for col in rule)
        made, rule_codes = 0, []
        for a, b in chunks:
            code, different = _new_pairs(a, b, n, earlier_blocks, earlier_pairs)
            made += different
            if alternatives:
                rule_codes.append(code)
            else:  # a rule of one value per column makes every pair once: no rule-sized array of its pairs
                code *= n_rules
                code += r
                kept.append(code)
        if alternatives:  # a pair may share two of a record's values
            code = np.unique(np.concatenate(rule_codes)) if rule_codes else np.empty(0, np.int64)
            earlier_pairs.append(code)
            kept.append(code * n_rules + r)
        else:
            earlier_blocks.append(block_of)
        del rule_codes, chunks, block_of
        stats.append({"rule": "+".join(rule), "pairs": made, "skipped_blocks": big_blocks,
                      "records_in_skipped_blocks": big_records, "seconds": round(time.monotonic() - started, 3)})
        done = _rule_columns(rule) - set().union(*(_rule_columns(later) for later in spec.blocking[r + 1:]))
        if columns_done is not None and done:
            columns_done(done)
    del earlier_blocks, earlier_pairs
    dtype = np.int32 if n < 2**31 else np.int64
    if not kept:
        return CandidatePairs(np.empty(0, dtype), np.empty(0, dtype), np.empty(0, np.int16), stats)
    # One array of every rule's codes, each part let go of once copied (concatenated at once, both would be
    # held: 16 bytes a pair at the blocking's end).
    code = np.empty(sum(len(k) for k in kept), dtype=np.int64)
    at = 0
    while kept:
        part = kept.pop(0)
        code[at:at + len(part)] = part
        at += len(part)
        del part
    code.sort()
    # Positions as 32-bit integers where they fit: 8 bytes a pair less for as long as the pairs are held
    # (87 million pairs at 13 million person records).
    rule = np.empty(len(code), dtype=np.int16)
    left, right = np.empty(len(code), dtype=dtype), np.empty(len(code), dtype=dtype)
    for start in range(0, len(code), PAIR_CHUNK):
        pair, rule[start:start + PAIR_CHUNK] = np.divmod(code[start:start + PAIR_CHUNK], n_rules)
        left[start:start + PAIR_CHUNK], right[start:start + PAIR_CHUNK] = np.divmod(pair, n)
    return CandidatePairs(left, right, rule, stats)


# ============================================================================ comparisons

# Derived values a record loader already holds as columns of their own (core/golden.load_person_records):
# taken from there instead of being computed again, one new string per record.
LOADED_DERIVATIONS = {"local(email_norm)": "email_local"}


class Columns:
    """Per-column arrays computed once: values (None for missing) and integer codes (-1 for missing).

    Codes make exact comparisons integer compares; columns listed together (first and
    last name) share one code space so a swapped pair can be compared across them.
    Codes are 32-bit and values are the frame's own arrays where they already hold None for
    missing: at 13 million records every extra array of a column is a hundred megabytes.
    """

    def __init__(self, df: pd.DataFrame, shared: tuple[str, ...] = ()):
        self.df = df
        self._values: dict[str, np.ndarray] = {}
        self._codes: dict[str, np.ndarray] = {}
        self._shared: dict[str, list[np.ndarray]] = {}
        if shared and all(isinstance(df[c].dtype, pd.CategoricalDtype) for c in shared):
            # One code space from the categories: stacking categoricals of different categories would make a
            # string per record of every column.
            space = pd.Index(pd.unique(np.concatenate([np.asarray(df[c].cat.categories, dtype=object) for c in shared])))
            for c in shared:
                recode = np.append(space.get_indexer(df[c].cat.categories), -1).astype(np.int32)
                self._codes[c] = recode[df[c].cat.codes.to_numpy()]
        elif shared:
            stacked = pd.concat([df[c] for c in shared], ignore_index=True)
            codes, _ = pd.factorize(stacked)
            n = len(df)
            for i, c in enumerate(shared):
                self._codes[c] = codes[i * n:(i + 1) * n].astype(np.int32)

    def values(self, col: str):
        """The column's values, indexable by positions or a mask (an object array; for a categorical column a
        :class:`Gathered`, for an Arrow string column an :class:`ArrowGathered`); derived columns are stored by
        derived()."""
        if col not in self._values:
            s = self.df[col]
            if isinstance(s.dtype, pd.CategoricalDtype):
                self._values[col] = Gathered(s.cat.codes.to_numpy(), s.cat.categories)
            elif is_arrow_string(s):
                self._values[col] = ArrowGathered(s)
            else:
                self._values[col] = _strings(self.df, col)
        return self._values[col]

    def codes(self, col: str) -> np.ndarray:
        """Equal values, equal codes (-1 for missing); a categorical's are its own category codes (shared with
        its :class:`Gathered` values, not another array)."""
        if col not in self._codes:
            if isinstance(self.df[col].dtype, pd.CategoricalDtype):
                self._codes[col] = self.values(col).codes
            else:
                self._codes[col] = value_codes(self.df[col])
        return self._codes[col]

    def derived(self, name: str, col: str, fn, arrow=None) -> np.ndarray:
        """Codes of ``fn`` of a column's values (its values under ``values(f"{name}({col})")``). ``fn`` runs
        once per distinct value, and records with the same value share the result; ``arrow``: the same function
        over an Arrow string array (missing where ``fn`` gives None), used for an Arrow string column, whose
        distinct values (an e-mail per record, nearly) would otherwise all become Python strings."""
        key = f"{name}({col})"
        if key not in self._codes:
            loaded = LOADED_DERIVATIONS.get(key)
            if loaded is not None and loaded in self.df.columns:
                self._values[key] = self.values(loaded)
                self._codes[key] = self.codes(loaded)
                return self._codes[key]
            if arrow is not None and is_arrow_string(self.df[col]):
                result = pd.Series(pd.arrays.ArrowStringArray(arrow(self.df[col].array.__arrow_array__())))
                codes = value_codes(result)
                distinct, first = np.unique(codes, return_index=True)
                results = result.array.take(first[distinct >= 0])  # each code's value, in code order
            else:
                codes, uniques = pd.factorize(self.df[col])
                mapped = np.empty(len(uniques) + 1, dtype=object)  # the last one, None, is where code -1 points
                mapped[:-1] = [fn(v) for v in uniques.tolist()]
                del uniques
                result_codes, results = pd.factorize(mapped)
                del mapped
                codes = np.append(result_codes, -1)[codes]
            # The distinct results once, and a code per record (not a string object per record).
            self._codes[key] = codes.astype(np.int32, copy=False)
            self._values[key] = Gathered(self._codes[key], pd.Index(results))
        return self._codes[key]

    def shared_derived(self, name: str, columns: tuple[str, ...], fn, arrow=None) -> list[np.ndarray]:
        """Per column, 32-bit codes of ``fn`` of its values in one code space for all ``columns`` (-1 for missing):
        ``fn`` runs once per distinct value of a column, and no value is kept per record; ``arrow`` as in
        :meth:`derived`, when every column is Arrow strings."""
        key = f"{name}({'|'.join(columns)})"
        if key not in self._shared and arrow is not None and all(is_arrow_string(self.df[c]) for c in columns):
            arrays = [arrow(self.df[c].array.__arrow_array__()) for c in columns]
            chunks = [chunk for a in arrays for chunk in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
            every = pa.chunked_array([c.cast(pa.large_string()) for c in chunks], pa.large_string())
            codes = value_codes(pd.Series(pd.arrays.ArrowStringArray(every)))
            del every, chunks, arrays
            n = len(self.df)
            self._shared[key] = [codes[i * n:(i + 1) * n] for i in range(len(columns))]
        if key not in self._shared:
            factorized = [pd.factorize(self.df[c]) for c in columns]
            mapped = [np.array([fn(v) for v in uniques.tolist()], dtype=object) for _, uniques in factorized]
            space = pd.factorize(np.concatenate(mapped))[0].astype(np.int32) if mapped else np.empty(0, np.int32)
            out, start = [], 0
            for (codes, _), m in zip(factorized, mapped):
                local = np.append(space[start:start + len(m)], np.int32(-1))  # code -1 reads the trailing -1
                out.append(local[codes])
                start += len(m)
            self._shared[key] = out
        return self._shared[key]


class Gathered:
    """A categorical column's values at the positions asked for: the distinct values once, and no string object
    per record (as a whole object array a column of 13 million records is another hundred megabytes)."""

    def __init__(self, codes: np.ndarray, categories: pd.Index):
        self.codes = codes.astype(np.int32, copy=False)  # -1 where missing
        self.lookup = np.append(np.asarray(categories, dtype=object), None)  # code -1 reads the trailing None

    def __getitem__(self, positions) -> np.ndarray:
        return self.lookup[self.codes[positions]]

    def __len__(self) -> int:
        return len(self.codes)

    def distinct(self) -> np.ndarray:
        return self.lookup[:-1]


class ArrowGathered:
    """An Arrow string column's values at the positions asked for, as an object array (None for missing): the
    column stays in Arrow's buffers (an e-mail is its bytes there, 75 bytes more as a Python string), and only
    the values of the pairs compared become Python strings."""

    def __init__(self, values: pd.Series):
        self.array = values.array.__arrow_array__()  # the column's own chunks: no copy

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions)
        if positions.ndim == 0:
            return self.array[int(positions)].as_py()
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        return np.asarray(self.array.take(pa.array(positions, type=pa.int64())).to_numpy(zero_copy_only=False),
                          dtype=object)

    def __len__(self) -> int:
        return len(self.array)

    def distinct(self) -> np.ndarray:
        return np.asarray(pc.unique(self.array.drop_null()).to_numpy(zero_copy_only=False), dtype=object)


class PairValues:
    """One side of the candidate pairs' values, gathered only at the pairs asked for: a string comparison scores
    each distinct pair of values once, and an array of every pair's values (tens of millions at 10 million
    contacts; new strings for an Arrow column) was the largest thing of the comparisons. ``other`` and
    ``use_other``: pairs whose names are swapped read the other column."""

    def __init__(self, values, positions: np.ndarray, other=None, use_other: np.ndarray | None = None):
        self.values, self.positions, self.other, self.use_other = values, positions, other, use_other

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        at = self.positions[idx]
        out = np.asarray(self.values[at], dtype=object)
        if self.other is not None and self.use_other is not None:
            swapped = self.use_other[idx]
            if swapped.any():
                out = out.copy()
                out[swapped] = np.asarray(self.other[at[swapped]], dtype=object)
        return out

    def dense(self) -> np.ndarray:
        return self[np.arange(len(self))]


def arrow_near_unique(df: pd.DataFrame, share: float = 0.5) -> list[str]:
    """The text columns whose values are nearly all distinct (e-mails, phones, IDs): held as Arrow strings they
    take a third of their memory as Python strings, and a categorical would spare nothing."""
    out = []
    for col in df.columns:
        s = df[col]
        if s.dtype == object or is_arrow_string(s):
            present = int(s.notna().sum())
            if present and s.nunique() > share * present and all(isinstance(v, str) for v in s.dropna().head(100)):
                out.append(col)
    return out


def in_arrow(df: pd.DataFrame, near_unique: list[str]) -> pd.DataFrame:
    """A frame's text without Python strings, in place: the ``near_unique`` columns (:func:`arrow_near_unique`) as
    Arrow strings, the other text columns as categoricals whose categories are Arrow strings (also those already
    in Arrow: pandas makes text it is handed a ``str`` column, 8 bytes of offset a record even for an initial)."""
    for col in near_unique:
        df[col] = arrow_strings(df[col])
    for col in df.columns:
        s = df[col]
        if s.dtype != object and (col in near_unique or not is_arrow_string(s)):
            continue
        codes, uniques = pd.factorize(s)
        if pd.api.types.infer_dtype(uniques, skipna=True) not in ("string", "empty"):
            continue
        categories = pd.Index(pd.array(np.asarray(uniques, dtype=object), dtype="string[pyarrow]"))
        df[col] = pd.Series(pd.Categorical.from_codes(codes, categories=categories), index=df.index)
    return df


def _strings(df: pd.DataFrame, col: str) -> np.ndarray:
    """A column as an object array with None for missing: the frame's own array when it is one already."""
    values = df[col].to_numpy(dtype=object)
    missing = pd.isna(values)
    if missing.any() and any(v is not None for v in values[missing]):
        values = values.copy()
        values[missing] = None
    return values


# Pairs whose strings are handed to rapidfuzz at a time: its input lists and their conversion for
# the tens of millions of candidate pairs of 10 million contacts at once took 8 GB.
SIMILARITY_CHUNK = 1_000_000


def _similarity(a: np.ndarray, b: np.ndarray, scorer: str, only: np.ndarray | None = None,
                codes: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Similarity in 0..1 for the pairs of strings (a[i], b[i]), computed where ``only`` is set (both present).

    ``codes``: the values' integer codes (one code space for both sides). Pairs repeat their values a lot (the
    candidate pairs of a block of Müllers compare the same first names again and again), so each distinct pair of
    codes is scored once (the scorers are symmetric) and the result spread over its pairs."""
    fn, scale = _SCORERS[scorer]
    if only is None:
        a, b = (v.dense() if isinstance(v, PairValues) else v for v in (a, b))
    ok = (pd.notna(a) & pd.notna(b)) if only is None else only
    out = np.zeros(len(a), dtype=np.float32)
    todo = np.flatnonzero(ok)
    inverse = None
    if codes is not None and len(todo):
        ca, cb = codes[0][todo].astype(np.int64), codes[1][todo].astype(np.int64)
        width = int(max(ca.max(), cb.max())) + 1
        key = np.minimum(ca, cb) * width + np.maximum(ca, cb)
        # Hashing, not sorting: codes in order of first appearance, and the first appearances in that order.
        inverse = pd.factorize(key)[0]
        first = np.flatnonzero(~pd.Series(key).duplicated().to_numpy())
        todo_all, todo = todo, todo[first]
    sims = np.zeros(len(todo), dtype=np.float32)
    for start in range(0, len(todo), SIMILARITY_CHUNK):
        part = todo[start:start + SIMILARITY_CHUNK]
        sims[start:start + len(part)] = process.cpdist(a[part].tolist(), b[part].tolist(), scorer=fn, workers=-1,
                                                       dtype=np.float32) / scale
    if inverse is not None:
        out[todo_all] = sims[inverse]
    else:
        out[todo] = sims
    return out


def comparison_levels(df: pd.DataFrame, left: np.ndarray, right: np.ndarray, spec: EntityMatchSpec,
                      cols: Columns | None = None) -> dict[str, np.ndarray]:
    """Level codes per comparison for each pair: -1 no information, 0 disagreement, higher = closer."""
    cols = cols or Columns(df, spec.name_swap or ())
    swap = None
    if spec.name_swap:
        f, l = spec.name_swap
        fv, lv = cols.values(f), cols.values(l)
        fc, lc = cols.codes(f), cols.codes(l)
        direct_exact = (fc[left] == fc[right]) & (lc[left] == lc[right]) & (fc[left] >= 0)
        crossed_exact = (fc[left] == lc[right]) & (lc[left] == fc[right]) & (fc[left] >= 0) & (lc[left] >= 0)
        # Only pairs that are not already identical need the (costlier) similarity check.
        todo = ~direct_exact
        fl, fr, ll, lr = fc[left] >= 0, fc[right] >= 0, lc[left] >= 0, lc[right] >= 0
        fvl, fvr, lvl, lvr = PairValues(fv, left), PairValues(fv, right), PairValues(lv, left), PairValues(lv, right)
        direct = (_similarity(fvl, fvr, "jaro_winkler", todo & fl & fr, (fc[left], fc[right]))
                  + _similarity(lvl, lvr, "jaro_winkler", todo & ll & lr, (lc[left], lc[right])))
        crossed = (_similarity(fvl, lvr, "jaro_winkler", todo & fl & lr, (fc[left], lc[right]))
                   + _similarity(lvl, fvr, "jaro_winkler", todo & ll & fr, (lc[left], fc[right])))
        swap = (crossed > direct + 0.2) | (crossed_exact & ~direct_exact)
    out: dict[str, np.ndarray] = {}
    for comp in spec.comparisons:
        out[comp.name] = _levels_for(cols, left, right, comp, spec, swap)
    return out


def _pair_codes(cols: Columns, left, right, col, spec, swap):
    """Both sides' codes of a column per pair, and their values as :class:`PairValues` (gathered when asked)."""
    ca, cb = cols.codes(col)[left], cols.codes(col)[right]
    va, vb = PairValues(cols.values(col), left), PairValues(cols.values(col), right)
    if swap is not None and spec.name_swap and col in spec.name_swap and swap.any():
        other = spec.name_swap[1] if col == spec.name_swap[0] else spec.name_swap[0]
        cb = cb.copy()
        cb[swap] = cols.codes(other)[right][swap]
        vb = PairValues(cols.values(col), right, cols.values(other), swap)
    return ca, cb, va, vb


_DACH_CODES = ("+49", "+43", "+41")


def _national_number(phone: str) -> str:
    """An E.164 number of Germany, Austria or Switzerland without its country code; others as they are."""
    return phone[3:] if phone.startswith(_DACH_CODES) and len(phone) > 6 else phone


def _national_number_arrow(phones: pa.ChunkedArray) -> pa.ChunkedArray:
    dach = pc.and_(pc.match_substring_regex(phones, r"^\+4[139]"), pc.greater(pc.utf8_length(phones), 6))
    return pc.if_else(dach, pc.utf8_slice_codeunits(phones, 3), phones)


def _local_part(email: str) -> str:
    return email.rsplit("@", 1)[0]


_ORG_SUFFIX = re.compile(r"[-_.]?(group|gruppe|holding)$")


def _mail_org(email: str) -> str | None:
    """The organisation a mail domain names: without its top-level domain (``x.de``, ``x.at`` and ``x.ch``
    are one company's) and without a group suffix (``x-group.com`` is ``x.de`` renamed)."""
    label = email.rsplit("@", 1)[-1].rsplit(".", 1)[0]
    return _ORG_SUFFIX.sub("", label) or None


def _mail_org_arrow(emails: pa.ChunkedArray) -> pa.ChunkedArray:
    """:func:`_mail_org` in Arrow (RE2 patterns of the same meaning)."""
    label = pc.replace_substring_regex(pc.replace_substring_regex(emails, r"^.*@", ""), r"\.[^.]*$", "")
    label = pc.replace_substring_regex(label, r"[-_.]?(group|gruppe|holding)$", "")
    return pc.if_else(pc.equal(label, ""), pa.scalar(None, label.type), label)


def _levels_for(cols: Columns, left, right, comp: ComparisonSpec, spec: EntityMatchSpec, swap) -> np.ndarray:
    n = len(left)
    levels = np.full(n, NULL, dtype=np.int8)
    if comp.kind == "exact_any":
        # Phones are compared by their national number: "+49 662 ..." (a number written without its country,
        # read as German) and "+43 662 ..." are one Salzburg line.
        # One code space for all the columns: a phone may sit in "phone" on one side, "mobile" on the other.
        national = cols.shared_derived("national", comp.columns, _national_number, arrow=_national_number_arrow)
        codes_l = [c[left] for c in national]
        codes_r = [c[right] for c in national]
        known = np.logical_or.reduce([c >= 0 for c in codes_l]) & np.logical_or.reduce([c >= 0 for c in codes_r])
        same = np.zeros(n, dtype=bool)
        for x in codes_l:
            for y in codes_r:
                same |= (x >= 0) & (x == y)
        levels[known] = 0
        levels[known & same] = 1
        return levels
    if comp.kind == "address":
        return _address_levels(cols, left, right, comp.columns)
    ca, cb, va, vb = _pair_codes(cols, left, right, comp.column, spec, swap)
    known = (ca >= 0) & (cb >= 0)
    if not known.any():
        return levels
    exact = known & (ca == cb)
    levels[known] = 0
    if comp.kind == "exact":
        levels[exact] = 1
    elif comp.kind == "string":
        sim = _similarity(va, vb, comp.scorer, known & ~exact, (ca, cb))
        k = len(comp.thresholds)
        for i, t in enumerate(reversed(comp.thresholds)):  # lowest threshold first, so higher ones overwrite
            levels[known & (sim >= t)] = i + 1
        levels[exact] = k + 1
    elif comp.kind == "email":
        local = cols.derived("local", comp.column, _local_part)
        la, lb = local[left], local[right]
        same_local = known & (la == lb) & ~exact
        local_values = cols.values(f"local({comp.column})")
        sim = _similarity(PairValues(local_values, left), PairValues(local_values, right), "jaro_winkler",
                          known & ~exact & ~same_local, (la, lb))
        levels[known & (sim >= 0.88)] = 1
        levels[same_local] = 2
        if spec.name_swap and "mailbox_is_name" in cols.df.columns:
            # "hans.mueller@a.de" vs "hans.mueller@b.de" repeats what the name comparisons already
            # say; counted again it would merge every pair of namesakes. Such mailboxes carry no
            # evidence of their own.
            # The same mailbox name at the same organisation's other domain (x.de / x-group.com / x.at)
            # is the person's, though: that evidence is kept (a merely similar one is not).
            named = cols.df["mailbox_is_name"].to_numpy(dtype=bool)
            org = cols.derived("mail_org", comp.column, _mail_org, arrow=_mail_org_arrow)
            same_org = (org[left] >= 0) & (org[left] == org[right])
            levels[(levels >= 1) & (named[left] | named[right]) & ~(same_org & (levels == 2))] = NULL
        levels[exact] = 3
        if "email_shared" in cols.df.columns:
            # A role or shared mailbox (info@, einkauf@) says "same company", not "same person".
            shared = cols.df["email_shared"].to_numpy(dtype=bool)
            levels[exact & (shared[left] | shared[right])] = 1
    elif comp.kind == "postcode":
        prefix = cols.derived("prefix2", comp.column, lambda v: v[:2])
        levels[known & (prefix[left] == prefix[right])] = 1
        # A leading zero lost (01067 -> 1067 in a spreadsheet) or added (Austria's 5020 padded to 05020 where the
        # country was taken for Germany) is the same code.
        digits = cols.derived("plz_digits", comp.column, lambda v: v.lstrip("0") or v)
        levels[exact | (known & (digits[left] == digits[right]))] = 2
    elif comp.kind == "legal_form":
        from ...cleaning.companies import forms_compatible

        values = cols.values(comp.column)
        present = values.distinct() if isinstance(values, (Gathered, ArrowGathered)) else [v for v in values if v is not None]
        uniques = pd.unique(pd.Series(present, dtype=object))
        index = {v: i for i, v in enumerate(uniques)}
        verdicts = {"same": 2, "compatible": 1, "conflict": 0, "unknown": NULL}
        table = np.array([[verdicts[forms_compatible(x, y)] for y in uniques] for x in uniques], dtype=np.int8).reshape(
            len(uniques), len(uniques))
        ia = np.array([index.get(v, -1) if v is not None else -1 for v in va.dense()])
        ib = np.array([index.get(v, -1) if v is not None else -1 for v in vb.dense()])
        ok = (ia >= 0) & (ib >= 0)
        levels[:] = NULL
        levels[ok] = table[ia[ok], ib[ok]]
    return levels


def _address_levels(cols: Columns, left, right, columns: tuple[str, ...]) -> np.ndarray:
    """Levels of one address comparison: 0 different, 1 same town, 2 same postcode, 3 same street there, 4 same
    house. The place is the PLZ where both have one (digits without leading zeros), else the town (Jaro-Winkler
    >= 0.9); a street without a place on either side is compared on its own. One comparison: the parts of an
    address are not independent (a PLZ names its town; a move changes them all at once)."""
    street, number, postcode, town = columns
    levels = np.full(len(left), NULL, dtype=np.int8)

    def both(col):
        codes = cols.codes(col)
        return (codes[left] >= 0) & (codes[right] >= 0)

    def similar(col, both_known):
        codes, values = cols.codes(col), cols.values(col)
        same = both_known & (codes[left] == codes[right])
        return same | (_similarity(PairValues(values, left), PairValues(values, right), "jaro_winkler",
                                   both_known & ~same, (codes[left], codes[right])) >= 0.9)

    has_plz, has_town, has_street = both(postcode), both(town), both(street)
    digits = cols.derived("plz_digits", postcode, lambda v: v.lstrip("0") or v)
    same_plz = has_plz & (digits[left] == digits[right])
    same_town = similar(town, has_town)
    place_known = has_plz | has_town
    same_place = same_plz | (~has_plz & same_town)
    same_street = similar(street, has_street)
    n_codes = cols.codes(number)
    same_number = both(number) & (n_codes[left] == n_codes[right])
    at_place = same_place | ~place_known  # a street is compared where the place agrees or is unknown
    levels[place_known | has_street] = 0
    levels[same_town] = 1
    levels[same_place] = 2
    levels[at_place & same_street] = 3
    levels[at_place & same_street & same_number] = 4
    return levels


def name_mailboxes(local: pd.Series, first: pd.Series, last: pd.Series) -> np.ndarray:
    """Vectorised :func:`name_mailbox` over whole columns."""
    letters = local.astype(object).where(local.notna(), None).str.replace(r"[^a-z]", "", regex=True)
    f = first.astype(object).where(first.notna(), "").str.replace(" ", "", regex=False).fillna("")
    l = last.astype(object).where(last.notna(), None).str.replace(" ", "", regex=False)
    ok = letters.notna() & l.notna() & (letters != "")
    hit = pd.Series(False, index=local.index)
    for candidate in (f + l, l + f, l, f.str[:1] + l, f.where(f != ""), l + f.str[:1]):
        hit |= ok & (letters == candidate).fillna(False).astype(bool)
    return hit.to_numpy(dtype=bool)


def name_mailbox(local: str | None, first: str | None, last: str | None) -> bool:
    """True when the mailbox is just the person's name ('hans.mueller', 'h.mueller', 'mueller')."""
    if not local or not last:
        return False
    letters = "".join(ch for ch in local if ch.isalpha())
    f = (first or "").replace(" ", "")
    l = last.replace(" ", "")
    return letters in {f + l, l + f, l, f[:1] + l, f, l + f[:1]} - {""}


# ============================================================================ Fellegi-Sunter

@dataclass
class FSModel:
    """m and u probabilities per comparison level, the prior, and term frequencies."""

    names: list[str]
    n_levels: list[int]
    m: list[np.ndarray]
    u: list[np.ndarray]
    prior: float
    tf: dict[str, np.ndarray] = field(default_factory=dict)  # per record: its value's frequency
    iterations: int = 0
    u_random: list[np.ndarray] = field(default_factory=list)

    def weights(self) -> list[np.ndarray]:
        return [np.log2(np.maximum(m, _FLOOR) / np.maximum(u, _FLOOR)) for m, u in zip(self.m, self.u)]

    def describe(self, specs: tuple[ComparisonSpec, ...]) -> list[dict]:
        out = []
        for spec, m, u, w in zip(specs, self.m, self.u, self.weights()):
            for lvl, name in enumerate(spec.level_names()):
                out.append({"comparison": spec.name, "level": name, "m": round(float(m[lvl]), 5),
                            "u": round(float(u[lvl]), 7), "weight": round(float(w[lvl]), 2)})
        return out


class LevelCodes:
    """Every comparison level of a pair in one integer: mixed radix, the first comparison most significant, each
    level plus one (so "no information", -1, is 0). Patterns sort as rows of levels do; 2 bytes a pair for the
    persons' seven comparisons (22,500 patterns) and 4 for the accounts' eleven, instead of a byte a comparison:
    at 10 million contacts the levels of every candidate pair are held until the model is fitted and every
    pair scored."""

    def __init__(self, spec: EntityMatchSpec):
        self.names = [c.name for c in spec.comparisons]
        self.bases = [c.top_level + 2 for c in spec.comparisons]
        self.size = math.prod(self.bases)
        self.strides = [math.prod(self.bases[i + 1:]) for i in range(len(self.bases))]
        self.dtype = np.uint16 if self.size <= 2**16 else np.int32 if self.size <= 2**31 else np.int64

    def pack(self, levels: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(levels.values()))) if levels else 0
        code = np.zeros(n, dtype=np.int64)
        for name, stride in zip(self.names, self.strides):
            code += (levels[name].astype(np.int64) + 1) * stride
        return code.astype(self.dtype)

    def unpack(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        return {name: ((codes // stride) % base).astype(np.int8) - np.int8(1)
                for name, base, stride in zip(self.names, self.bases, self.strides)}

    def histogram(self, codes: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The distinct patterns (as levels, in the order of their codes) and how many pairs have each."""
        counts = np.bincount(codes, minlength=self.size)
        patterns = np.flatnonzero(counts)
        return self.unpack(patterns), counts[patterns]


def _unique_rows(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(axis=0) for small level codes, via one packed integer per row (much faster)."""
    packed = np.zeros(len(mat), dtype=np.int64)
    for c in range(mat.shape[1]):
        packed = packed * 16 + (mat[:, c].astype(np.int64) + 1)
    uniq, first, counts = np.unique(packed, return_index=True, return_counts=True)
    return mat[first], counts


def _level_matrix(levels: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.stack([levels[n] for n in names], axis=1) if names else np.zeros((0, 0), np.int8)


def estimate_u(df: pd.DataFrame, spec: EntityMatchSpec, sample: int, seed: int = 0,
               cols: Columns | None = None) -> list[np.ndarray]:
    """u: how often two records of different entities agree at each level, from random pairs.

    Random pairs are almost never matches in a large data set, but in a small one they can be (five records
    with two duplicates: one pair in five), so a pair that a training rule marks as a near-certain match is left
    out. Where all pairs fit in the sample, all are taken instead of a sample."""
    n = len(df)
    all_pairs = n * (n - 1) // 2
    if 0 < all_pairs <= sample:
        a, b = np.triu_indices(n, 1)
    else:
        rng = np.random.default_rng(seed)
        size = sample if n >= 2 else 0  # a first run may have nothing to compare
        a = rng.integers(0, max(n, 1), size=size)
        b = rng.integers(0, max(n, 1), size=size)
        keep = a != b
        a, b = a[keep], b[keep]
    levels = comparison_levels(df, a, b, spec, cols)
    match = np.logical_or.reduce([mask for _rule, mask in _training_matches(levels, spec)] or [np.zeros(len(a), bool)])
    out = []
    for comp in spec.comparisons:
        lv = levels[comp.name][~match]
        k = comp.top_level + 1
        counts = np.bincount(lv[lv >= 0], minlength=k).astype(float)[:k]
        # Add-one smoothing: a level never seen among random pairs is rare, not impossible.
        out.append((counts + 1) / (counts.sum() + k))
    return out


def term_frequencies(df: pd.DataFrame, spec: EntityMatchSpec) -> dict[str, np.ndarray]:
    """Per comparison with term frequencies: how common each record's value is (NaN where missing).

    A name compared across the swap columns ("Lindenmeier, Eugenia" against "Eugenia Lindenmeier") is looked up
    in both: the more common reading counts. Looked up in its own column only, a surname in the first-name field
    would be "never seen" and its agreement worth seventeen bits it does not have."""
    tf: dict[str, np.ndarray] = {}
    for comp in spec.comparisons:
        if not comp.term_frequency:
            continue
        codes, uniques = pd.factorize(df[comp.column])
        if not (codes >= 0).any():
            continue
        share = _shares(codes)
        if spec.name_swap and comp.column in spec.name_swap:
            other_codes, other_uniques = pd.factorize(df[spec.name_swap[1] if comp.column == spec.name_swap[0]
                                                         else spec.name_swap[0]])
            if (other_codes >= 0).any():
                as_other = pd.Index(other_uniques).get_indexer(pd.Index(uniques))  # -1: never in the other column
                other_share = np.r_[_shares(other_codes), 0.0]
                share = np.maximum(share, other_share[as_other])
        tf[comp.name] = np.where(codes >= 0, np.r_[share, np.nan][codes], np.nan).astype(np.float32)
    return tf


def _shares(codes: np.ndarray) -> np.ndarray:
    """Each code's share of the non-missing values."""
    counts = np.bincount(codes[codes >= 0]).astype(np.float64)
    return counts / counts.sum()


def concat_compact(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames made a chunk at a time, one below the other, compacted: categoricals of the chunks are united (their
    categories merged) rather than turned back into a string object per record."""
    from pandas.api.types import union_categoricals

    columns = {}
    for col in frames[0].columns:
        parts = [f[col] for f in frames]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):
            columns[col] = pd.Series(union_categoricals([p.array for p in parts]))
        else:
            columns[col] = pd.concat(parts, ignore_index=True)
    return compact(pd.DataFrame(columns))


def compact(df: pd.DataFrame, max_distinct_share: float = 0.9) -> pd.DataFrame:
    """String columns as categoricals, in place: each distinct value stored once and a 32-bit code per record.

    A cleaned column is a new string object per record (60 bytes) although most values repeat (names, towns,
    streets, dates); at 13 million records and twenty columns that is the difference between 16 GB and 3.
    Columns of nearly unique values (record keys) stay as they are: there a category would cost more."""
    for col in df.columns:
        s = df[col]
        if s.dtype != object:
            continue
        codes, uniques = pd.factorize(s)  # one hashing pass: the codes are the categorical's
        present = int((codes >= 0).sum())
        if present and len(uniques) <= max_distinct_share * present and all(isinstance(v, str) for v in uniques[:100]):
            df[col] = pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object)),
                                index=df.index)
    return df


def _training_matches(levels: dict[str, np.ndarray], spec: EntityMatchSpec) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """Per training rule: the pairs it marks as near-certain matches (every comparison of the rule at its top level)."""
    top = {c.name: c.top_level for c in spec.comparisons}
    n = len(next(iter(levels.values()))) if levels else 0
    return [(rule, np.logical_and.reduce([levels[name] == top[name] for name in rule] or [np.ones(n, bool)]))
            for rule in spec.training_rules]


def fit(levels: dict[str, np.ndarray], spec: EntityMatchSpec, u_random: list[np.ndarray],
        tf: dict[str, np.ndarray], n_records: int, counts: np.ndarray | None = None) -> FSModel:
    """m from high-confidence pairs, u from random pairs, the prior from the first training rule.

    ``levels`` are those of every candidate pair or, with ``counts``, the distinct patterns of levels and the
    number of pairs of each (:meth:`LevelCodes.histogram`): every count below is a sum over pairs, so both give
    the same model.

    u is the chance that two random records agree at a level (estimate_u). m, the chance
    that two records of the same entity do, is counted among candidate pairs that a
    deterministic training rule marks as near-certain matches (e.g. the same e-mail),
    for every comparison the rule does not itself use, and then refined by EM over all
    candidate pairs with u and the prior held fixed (a free prior collapses: pairs that
    share a block agree far more often than random pairs do). The prior is the number
    of pairs the first rule finds, divided by its assumed recall, over all possible pairs.
    """
    names = [c.name for c in spec.comparisons]
    n_levels = [c.top_level + 1 for c in spec.comparisons]
    m: list[np.ndarray] = []
    rule_masks = [(set(rule), mask) for rule, mask in _training_matches(levels, spec)]
    pairs_of = None if counts is None else counts.astype(np.float64)
    for c, comp in enumerate(spec.comparisons):
        k = n_levels[c]
        agree = np.zeros(k)
        for used, mask in rule_masks:
            if comp.name in used:
                continue
            lv = levels[comp.name][mask]
            ok = lv >= 0
            agree += np.bincount(lv[ok], weights=None if pairs_of is None else pairs_of[mask][ok], minlength=k)[:k]
        if agree.sum() == 0:  # nothing to learn from: agreement is typical of a match
            agree = np.r_[np.full(k - 1, 0.05), 0.9] * 100
        m.append((agree + 1.0) / (agree.sum() + k))
    possible = max(n_records * (n_records - 1) / 2, 1.0)
    found = 0.0
    if rule_masks:
        found = float(rule_masks[0][1].sum() if pairs_of is None else pairs_of[rule_masks[0][1]].sum())
    # (Bounded away from 0: an empty first run has no pairs, and log(0) has no meaning.)
    prior = max(min(max(found / spec.training_recall, n_records / 2) / possible, 0.5), 1e-12)
    iterations = 0
    mat = _level_matrix(levels, names) if spec.em_iterations > 0 else np.zeros((0, 0), np.int8)
    if len(mat):
        # Distinct patterns in the order of LevelCodes (rows of levels sorted), whichever way they came.
        patterns, counts = (_unique_rows(mat) if pairs_of is None else (mat, pairs_of))
        counts = counts.astype(float)
        logit_prior = math.log(prior / (1 - prior))
        for iterations in range(1, spec.em_iterations + 1):
            log_ratio = np.full(len(patterns), logit_prior)
            for c in range(len(names)):
                lv = patterns[:, c]
                ok = lv >= 0
                log_ratio[ok] += np.log(m[c][lv[ok]]) - np.log(np.maximum(u_random[c][lv[ok]], _FLOOR))
            post = 1.0 / (1.0 + np.exp(-np.clip(log_ratio, -50, 50)))
            wm = post * counts
            new_m = []
            for c, k in enumerate(n_levels):
                lv = patterns[:, c]
                ok = lv >= 0
                tm = np.bincount(lv[ok], weights=wm[ok], minlength=k)[:k]
                new_m.append((tm + 1.0) / (tm.sum() + k))
            delta = max(float(np.abs(a - b).max()) for a, b in zip(new_m, m))
            m = new_m
            if delta < 1e-5:
                break
    return FSModel(names, n_levels, m, u_random, prior, tf, iterations, u_random)


def score(df: pd.DataFrame, left: np.ndarray, right: np.ndarray, levels: dict[str, np.ndarray], model: FSModel,
          spec: EntityMatchSpec) -> tuple[np.ndarray, np.ndarray]:
    """Match weight (log2 Bayes factor incl. prior) and probability per pair."""
    weights = model.weights()
    total = np.full(len(left), math.log2(model.prior / (1 - model.prior)), dtype=np.float64)
    for c, comp in enumerate(spec.comparisons):
        lv = levels[comp.name]
        ok = lv >= 0
        total[ok] += weights[c][lv[ok]]
        if comp.name in model.tf:
            # A shared rare surname says more than a shared "Müller": adjust exact agreements by
            # how common the value is, relative to the average chance agreement u.
            top = lv == comp.top_level
            if top.any():
                freq = np.nan_to_num(model.tf[comp.name][left[top]].astype(np.float64), nan=_FLOOR)
                u_exact = float((model.u_random or model.u)[c][comp.top_level])
                total[top] += np.log2(np.maximum(u_exact, _FLOOR) / np.maximum(freq, _FLOOR))
    prob = 1.0 / (1.0 + np.power(2.0, -np.clip(total, -60, 60)))
    return total, prob
