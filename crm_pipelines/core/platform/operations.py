"""``config/operations.yaml``: how the pipelines are operated (run history retention, parallelism).

Validated on load; every error names the file and key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .configfile import check_keys, load_yaml, require_mapping

KEYS = ("run_retention_days", "scoring_ranges", "near_real_time_max_age_minutes", "sla_check_before_due_minutes",
        "sla_recheck_minutes", "ingest_first")


@dataclass(frozen=True)
class OperationsConfig:
    run_retention_days: int = 90
    scoring_ranges: int = 4  # lead scoring: one step per contact range, run in parallel by the executor
    # A landing file older than this when a near-real-time sensor first sees it (first start, after
    # downtime) goes to the nightly load, not to sales as a "new" lead weeks late.
    near_real_time_max_age_minutes: int = 60
    sla_check_before_due_minutes: int = 15  # hand-offs are checked against the CRM from this long before due
    sla_recheck_minutes: int = 10           # ... and again at most this often until their first CRM activity
    # Sources whose loads the executor starts first, in this order, when there are fewer slots than sources.
    ingest_first: tuple[str, ...] = ()


def load_operations(path: str | Path, sources: Iterable[str] | None = None) -> OperationsConfig:
    """``sources``: the names ``ingest_first`` may use (the mappings'); None: not checked."""
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", KEYS)

    def whole(key: str, default: int, low: int, high: int, unit: str) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise doc.error(key, f"must be a whole number of {unit} between {low} and {high}, got {value!r}")
        return value

    first = data.get("ingest_first") or []
    if not isinstance(first, list) or not all(isinstance(s, str) for s in first) or len(set(first)) != len(first):
        raise doc.error("ingest_first", f"must be a list of distinct source names, got {first!r}")
    known = None if sources is None else set(sources)
    for i, source in enumerate(first):
        if known is not None and source not in known:
            raise doc.error(f"ingest_first[{i}]", f"unknown source '{source}'; the mappings' sources: "
                                                  f"{', '.join(sorted(known))}")

    return OperationsConfig(ingest_first=tuple(first), run_retention_days=whole("run_retention_days", 90, 1, 3650, "days"),
                            scoring_ranges=whole("scoring_ranges", 4, 1, 256, "ranges"),
                            near_real_time_max_age_minutes=whole("near_real_time_max_age_minutes", 60, 1, 10080,
                                                                 "minutes"),
                            sla_check_before_due_minutes=whole("sla_check_before_due_minutes", 15, 0, 1440, "minutes"),
                            sla_recheck_minutes=whole("sla_recheck_minutes", 10, 1, 1440, "minutes"))
