"""Frame helpers the golden steps' memory rests on: value codes by sorting, forgetting category lookups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from crm_pipelines.core.platform.frames import drop_category_engines, value_codes


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((a[:, None] == a[None, :]) == (b[:, None] == b[None, :])).all() and ((a < 0) == (b < 0)).all())


@pytest.mark.parametrize("dtype", ["str", "string[pyarrow]", "object", "category"])
def test_value_codes_give_equal_values_equal_codes_and_missing_minus_one(dtype):
    rng = np.random.default_rng(5)
    values = [None if i % 7 == 0 else f"m{v}@x.de" for i, v in enumerate(rng.integers(0, 40, 400))]
    values[3] = ""  # an empty string is a value, not missing
    series = pd.Series(values, dtype=dtype)
    codes = value_codes(series)
    assert codes.dtype == np.int32
    assert _same_partition(codes, pd.factorize(pd.Series(values, dtype=object))[0])
    assert (codes == -1).sum() == sum(v is None for v in values)
    assert set(codes[codes >= 0].tolist()) == set(range(int(codes.max()) + 1))  # dense


def test_value_codes_over_many_chunks_and_all_missing():
    chunks = [pa.array(["b", None, "a"], pa.large_string()), pa.array(["a", "c", "b"], pa.large_string()),
              pa.array([], pa.large_string())]
    series = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(chunks)))
    assert value_codes(series).tolist() == [1, -1, 0, 0, 2, 1]  # ranks of the sorted distinct values
    assert value_codes(pd.Series([None, None], dtype="str")).tolist() == [-1, -1]
    assert value_codes(pd.Series([], dtype="str")).tolist() == []


def test_category_lookups_are_forgotten_and_rebuilt_when_asked():
    df = pd.DataFrame({"city": pd.Series(["Köln", "Bonn", "Köln"], dtype="str").astype("category")})
    assert df["city"].cat.categories.get_loc("Köln") == 1
    assert "_engine" in df["city"].cat.categories._cache
    drop_category_engines(df)
    assert "_engine" not in df["city"].cat.categories._cache
    assert df["city"].cat.categories.get_loc("Bonn") == 0 and df["city"].tolist() == ["Köln", "Bonn", "Köln"]
