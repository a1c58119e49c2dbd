"""Records spilled by cluster into parts and read back: whole clusters, read order, nothing left on disk."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from crm_pipelines.core.golden.parts import ClusterParts


def test_parts_hold_whole_clusters_in_read_order_and_leave_nothing_behind():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 400, 2_000)
    labels = np.unique(labels, return_inverse=True)[1]  # dense, as a resolution gives them
    records = pd.DataFrame({"record_key": [f"k{i:05d}" for i in range(len(labels))],
                            "value": rng.normal(size=len(labels)), "text": [None, "ä"] * (len(labels) // 2)})
    seen_clusters, seen_records = [], []
    with ClusterParts(labels, part_records=150) as parts:
        for start in range(0, len(records), 333):  # slices that do not line up with the parts
            parts.add(records.iloc[start:start + 333])
        folder = parts._dir
        assert os.stat(folder).st_mode & 0o077 == 0  # personal data: the step's user only
        assert parts.n_parts >= len(labels) // 150 - 1
        for part, clusters, local in parts.parts():
            assert part["_pos"].is_monotonic_increasing  # read order within the part
            assert np.array_equal(clusters[local], part["_label"].to_numpy())
            assert np.array_equal(np.unique(local), np.arange(len(clusters)))
            pd.testing.assert_frame_equal(part[records.columns], records.iloc[part["_pos"]].reset_index(drop=True))
            seen_clusters.append(clusters)
            seen_records.append(part["_pos"].to_numpy())
    everything = np.concatenate(seen_clusters)
    assert np.array_equal(np.sort(everything), np.arange(labels.max() + 1))  # each cluster in exactly one part
    assert np.array_equal(np.sort(np.concatenate(seen_records)), np.arange(len(labels)))
    assert not os.path.exists(folder)


def test_a_cluster_larger_than_a_part_stays_whole_and_no_part_is_empty():
    labels = np.array([0, 1, 1, 1, 1, 1, 1, 1, 2, 3])
    with ClusterParts(labels, part_records=3) as parts:
        parts.add(pd.DataFrame({"x": range(10)}))
        got = [(clusters.tolist(), part["x"].tolist()) for part, clusters, _ in parts.parts()]
    # A cluster goes to the part its first record falls in (records counted in label order): cluster 1
    # starts at record 1, so part 0 grows to 8 records; clusters 2 and 3 start at records 8 and 9.
    assert got == [([0, 1], [0, 1, 2, 3, 4, 5, 6, 7]), ([2], [8]), ([3], [9])]


def test_parts_refuse_more_or_fewer_records_than_were_resolved():
    with ClusterParts(np.array([0, 0, 1])) as parts:
        parts.add(pd.DataFrame({"x": [1, 2]}))
        with pytest.raises(ValueError, match="2 records added, 3 were resolved"):
            next(parts.parts())
        with pytest.raises(ValueError, match="4 records added, 3 were resolved"):
            parts.add(pd.DataFrame({"x": [3, 4]}))
    with pytest.raises(ValueError, match="at least one record"):
        ClusterParts(np.array([0]), part_records=0)


def test_no_records_no_parts():
    with ClusterParts(np.empty(0, np.int64)) as parts:
        assert parts.n_parts == 0 and list(parts.parts()) == []
