"""The records of a golden step in parts of whole clusters, spilled to local disk and read back one part at a time.

Survivorship, lineage, crosswalk and match edges need a cluster's records together and nothing of any other
cluster. Held all at once, the golden fields of 13 million records (and the golden records, lineage and
crosswalk made of them) were most of the 21 GB golden/contacts needed at 10 million contacts. The records are
read once, a slice at a time, and each record goes to the part of its cluster; then the parts are worked one
after the other, so the step holds one part's records, however many there are.

Clusters go to parts in label order, about ``part_records`` records to a part. A part is a file of pickled
frames (one per slice that had records for it): pickle keeps every column's type as it was read, which a
columnar file would have to be told per column. The files live in a temporary folder (``TMPDIR``) that only
the step's user can read (the records are personal data) and that is removed when the step ends, failed or not.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from typing import Iterator

import numpy as np
import pandas as pd

# Records per part: the golden fields of half a million records are about 300 MB in memory.
PART_RECORDS = 500_000


class ClusterParts:
    """``labels``: the cluster of each record, records in read order (position 0, 1, ...)."""

    def __init__(self, labels: np.ndarray, part_records: int = PART_RECORDS):
        if part_records < 1:
            raise ValueError(f"a part holds at least one record, not {part_records}")
        self.labels = labels
        n_clusters = int(labels.max() + 1) if len(labels) else 0
        sizes = np.bincount(labels, minlength=n_clusters)
        first_record = np.cumsum(sizes) - sizes  # of each cluster, counting in label order
        raw = first_record // part_records  # rising; a cluster larger than a part leaves numbers out
        self.part_of_cluster = np.cumsum(np.r_[0, raw[1:] != raw[:-1]]).astype(np.int64) if n_clusters else raw
        self.n_parts = int(self.part_of_cluster[-1] + 1) if n_clusters else 0
        self._dir = tempfile.mkdtemp(prefix="crm-golden-parts-")
        self._written = 0

    def __enter__(self) -> "ClusterParts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def _path(self, part: int) -> str:
        return os.path.join(self._dir, f"part-{part:05d}.pickle")

    def add(self, records: pd.DataFrame) -> None:
        """The next records in read order (a slice): each to the part of its cluster, with its position
        (``_pos``) and cluster label (``_label``)."""
        start = self._written
        self._written += len(records)
        if self._written > len(self.labels):
            raise ValueError(f"{self._written:,} records added, {len(self.labels):,} were resolved")
        pos = np.arange(start, start + len(records), dtype=np.int64)
        labels = self.labels[pos]
        part = self.part_of_cluster[labels]
        records = records.reset_index(drop=True).assign(_pos=pos, _label=labels)
        for p in np.unique(part):
            with open(self._path(int(p)), "ab") as handle:
                pickle.dump(records[part == p], handle, protocol=pickle.HIGHEST_PROTOCOL)

    def parts(self) -> Iterator[tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
        """Per part, in order: its records (read order), the global labels of its clusters (ascending) and each
        record's cluster among them (0 .. clusters - 1). A part's file is deleted once it is handed out."""
        if self._written != len(self.labels):
            raise ValueError(f"{self._written:,} records added, {len(self.labels):,} were resolved")
        for p in range(self.n_parts):
            frames = []
            with open(self._path(p), "rb") as handle:
                while True:
                    try:
                        frames.append(pickle.load(handle))
                    except EOFError:
                        break
            os.remove(self._path(p))
            records = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
            del frames
            clusters = np.flatnonzero(self.part_of_cluster == p)
            local = np.searchsorted(clusters, records["_label"].to_numpy())
            yield records, clusters, local
