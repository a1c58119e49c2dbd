"""Frames in and out of the warehouse: compact reads (repeated strings shared through value pools, typed
parsing of PostgreSQL COPY output) and the rows a frame becomes for SQLite inserts or a PostgreSQL COPY."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

SQLITE_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def is_arrow_string(s: pd.Series) -> bool:
    """Is the column text in Arrow buffers (pandas' ``string[pyarrow]`` or its default ``str``)?"""
    return isinstance(s.dtype, pd.StringDtype) and s.dtype.storage == "pyarrow"


def arrow_strings(values: pd.Series) -> pd.Series:
    """Text as Arrow strings, missing as <NA> (same index): no Python string per value."""
    if is_arrow_string(values) and values.dtype.na_value is pd.NA:
        return values
    return pd.Series(values.to_numpy(dtype=object), index=values.index, dtype="string[pyarrow]")


def compact_frame(result, chunk_rows: int) -> pd.DataFrame:
    """A result's rows as object columns with None for missing, fetched in chunks (a server-side
    cursor on PostgreSQL) with repeated values sharing one Python object (:func:`_shared_values`),
    so the driver's rows never all exist at once. With the golden step's derived columns, the 1.3
    million person records of a million contacts take 1.9 GB of process memory this way instead of
    3.1 GB (bench_golden_memory)."""
    cols = list(result.keys())
    pools: list[dict | None] = [{} for _ in cols]
    parts: list[list[np.ndarray]] = [[] for _ in cols]
    while rows := result.fetchmany(chunk_rows):
        columns = list(zip(*rows))
        del rows
        for i, column in enumerate(columns):
            # fromiter: a value that is itself a sequence stays one value.
            parts[i].append(_shared_values(np.fromiter(column, dtype=object, count=len(column)), pools, i))
        del columns
    data = {i: (np.concatenate(p) if p else np.empty(0, dtype=object)) for i, p in enumerate(parts)}
    frame = pd.DataFrame(data, dtype=object)  # dtype=object: pandas 3 would make arrow strings of them
    frame.columns = cols
    return frame


def _shared_values(values: np.ndarray, pools: list[dict | None], i: int) -> np.ndarray:
    """``values`` with equal values as one object (missing as None), through column ``i``'s pool
    across chunks. Most columns repeat (source, city, first names, phonetic keys); a column whose
    first chunk is mostly distinct (keys, e-mails) is left as it is, since a pool would only cost."""
    pool = pools[i]
    if pool is None:
        return np.where(pd.isna(values), None, values) if len(values) else values
    try:
        codes, uniques = pd.factorize(values)
    except TypeError:  # unhashable values (a driver's arrays): kept as they are
        pools[i] = None
        return values
    if not pool and len(uniques) > len(values) // 2 and len(values) >= 1000:
        pools[i] = None
        return np.where(codes < 0, None, values)
    shared = np.empty(len(uniques) + 1, dtype=object)
    shared[:-1] = [pool.setdefault(u, u) for u in uniques.tolist()]
    shared[-1] = None
    return shared[codes]


def copy_parser(coltype: sa.types.TypeEngine):
    """How a column of this type is made from COPY's CSV text (NaN for NULL), by chunk: a function
    (values, pools, column number) -> array; None for a type read through the driver only (Numeric:
    the driver's Decimal)."""
    if isinstance(coltype, (sa.Text, sa.String, sa.Enum)):
        return _shared_values  # NaN (NULL) comes out as None there
    if isinstance(coltype, sa.Boolean):
        return lambda v, _p, _i: np.where(pd.isna(v), None, v == "t").astype(object)
    if isinstance(coltype, sa.Integer):
        return _int_values
    if isinstance(coltype, sa.Float):
        return lambda v, _p, _i: np.where(pd.isna(v), None, pd.to_numeric(v).astype(object))
    if isinstance(coltype, sa.DateTime):
        return lambda v, _p, _i: pd.to_datetime(pd.Series(v, dtype=object), utc=True, format="ISO8601")
    if isinstance(coltype, sa.Date):
        return lambda v, _p, _i: np.array([None if pd.isna(x) else pd.Timestamp(x).date() for x in v], dtype=object)
    return None


def _int_values(values: np.ndarray, _pools, _i) -> np.ndarray:
    out = np.full(len(values), None, dtype=object)
    present = ~pd.isna(values)
    out[present] = values[present].astype(np.int64).astype(object)  # Python ints, as the driver gives
    return out


def concat_parts(parts: list) -> np.ndarray | pd.Series:
    if not parts:
        return np.empty(0, dtype=object)
    if isinstance(parts[0], pd.Series):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)


class ValuePool:
    """Equal values as one object (missing as None) across the parts of a column made piece by piece,
    as :func:`compact_frame` does for what it reads (derived columns)."""

    def __init__(self) -> None:
        self._pools: list[dict | None] = [{}]

    def share(self, values: np.ndarray) -> np.ndarray:
        return _shared_values(values, self._pools, 0)


def rows_for_sqlite(frame: pd.DataFrame, table: sa.Table) -> list[tuple]:
    columns = []
    for name in frame.columns:
        s = frame[name]
        coltype = table.c[name].type
        if isinstance(coltype, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(s.dtype):
            if getattr(s.dt, "tz", None) is not None:
                s = s.dt.tz_convert("UTC").dt.tz_localize(None)
            values = _none_where(s.dt.strftime(SQLITE_TS_FORMAT), s.isna())
        elif isinstance(coltype, sa.Date) and pd.api.types.is_datetime64_any_dtype(s.dtype):
            values = _none_where(s.dt.strftime("%Y-%m-%d"), s.isna())
        elif isinstance(coltype, sa.Boolean):
            values = [None if v is None or v is pd.NA else int(bool(v)) for v in s.astype(object).tolist()]
        elif pd.api.types.is_float_dtype(s.dtype):
            arr = s.to_numpy()
            values = [None if np.isnan(v) else float(v) for v in arr]
        else:
            values = _none_where(s, s.isna())
        columns.append(values)
    return list(zip(*columns))


def _none_where(s: pd.Series, missing: pd.Series) -> list:
    out = s.astype(object).tolist()
    if missing.any():
        for i in np.flatnonzero(missing.to_numpy()):
            out[i] = None
    return out


def frame_for_copy(frame: pd.DataFrame, table: sa.Table) -> pd.DataFrame:
    out = {}
    for name in frame.columns:
        s = frame[name]
        coltype = table.c[name].type
        if isinstance(coltype, sa.Date) and not isinstance(coltype, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(s.dtype):
            s = s.dt.strftime("%Y-%m-%d")
        elif isinstance(coltype, sa.DateTime) and pd.api.types.is_datetime64_any_dtype(s.dtype):
            s = s.dt.tz_convert("UTC") if getattr(s.dt, "tz", None) is not None else s
            # numpy's ISO text, not strftime: three times faster over the golden tables' timestamps.
            text = np.datetime_as_string(s.dt.tz_localize(None).to_numpy(), unit="us").astype(object) + "+00:00"
            s = pd.Series(np.where(s.isna().to_numpy(), None, text), index=s.index, dtype=object)
        out[name] = s
    return pd.DataFrame(out, index=frame.index)


def drop_category_engines(df: pd.DataFrame) -> None:
    """Forget the lookup tables pandas built for the categories of ``df``'s categoricals (rebuilt when asked for).

    Checking that Arrow categories are unique (uniting the categoricals of a read's slices does) makes a Python
    string of every category for its hash table and keeps it. Made at the end of a read, those strings land in the
    holes the read's garbage left all over the interpreter's small-object memory, and each keeps its block of
    memory: after reading 1.3 million person records, 96 MB of blocks held by 4 MB of category strings."""
    for col in df.columns:
        dtype = df[col].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            cache = getattr(dtype.categories, "_cache", None)
            if isinstance(cache, dict):
                cache.clear()


# Below this many rows a read or phase leaves little to hand back, and a full garbage collection of a large
# interpreter (Dagster, pandas, Arrow loaded) costs a second or more: half of a small golden run's time.
FREE_MEMORY_FROM_ROWS = 100_000


def return_free_memory(rows: int) -> None:
    """Hand the memory the allocators hold free back to the system: Arrow's pool, and the C heap (glibc's
    malloc_trim; elsewhere nothing). After a large read or a phase of large temporary arrays, the free pages lie
    between live ones, where the large arrays of what follows (mapped apart from them) never reuse them.
    ``rows``: how many rows the phase worked on; nothing is done below :data:`FREE_MEMORY_FROM_ROWS`."""
    if rows < FREE_MEMORY_FROM_ROWS:
        return
    import ctypes
    import ctypes.util
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def value_codes(values: pd.Series) -> np.ndarray:
    """Equal values, equal 32-bit codes; -1 where missing. For Arrow strings by sorting (a code is its value's rank
    among the distinct values): hashing 13 million nearly distinct e-mails into codes (pandas' factorize, Arrow's
    dictionary encoding) held twice the memory of sorting them. Other columns by ``pd.factorize`` (codes in order
    of first appearance). Only equality of codes means anything."""
    if not is_arrow_string(values):
        return pd.factorize(values)[0].astype(np.int32)
    import pyarrow as pa
    import pyarrow.compute as pc

    array = values.array.__arrow_array__()
    n = len(array)
    codes = np.full(n, -1, dtype=np.int32)
    present = n - array.null_count
    if not present:
        return codes
    order = pc.array_sort_indices(array).to_numpy()[:present]  # missing values sort last
    ordered = array.take(pa.array(order))
    if isinstance(ordered, pa.ChunkedArray):
        ordered = ordered.combine_chunks()
    new = np.ones(present, dtype=bool)
    if present > 1:
        new[1:] = pc.not_equal(ordered.slice(1), ordered.slice(0, present - 1)).to_numpy(zero_copy_only=False)
    del ordered
    codes[order] = np.cumsum(new, dtype=np.int32) - 1
    return codes
