"""privacy.yaml: retention periods (contacts, landing files) and erasure sensor interval, validated on load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..platform.configfile import check_keys, load_yaml, require_mapping


@dataclass(frozen=True)
class PrivacySettings:
    prospect_months: int = 24
    sensor_interval_seconds: int = 15
    landing_retention_days: int = 90


def load_privacy_settings(path: str | Path) -> PrivacySettings:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("retention", "erasure", "landing"))
    retention = require_mapping(doc, data.get("retention") or {}, "retention")
    check_keys(doc, retention, "retention", ("prospect_months",))
    erasure = require_mapping(doc, data.get("erasure") or {}, "erasure")
    check_keys(doc, erasure, "erasure", ("sensor_interval_seconds",))
    months = retention.get("prospect_months", 24)
    if isinstance(months, bool) or not isinstance(months, int) or not 1 <= months <= 240:
        raise doc.error("retention.prospect_months", f"must be a whole number of months between 1 and 240, got {months!r}")
    interval = erasure.get("sensor_interval_seconds", 15)
    if isinstance(interval, bool) or not isinstance(interval, int) or not 5 <= interval <= 60:
        raise doc.error("erasure.sensor_interval_seconds",
                        f"must be between 5 and 60 seconds (requests are due within a minute), got {interval!r}")
    landing = require_mapping(doc, data.get("landing") or {}, "landing")
    check_keys(doc, landing, "landing", ("retention_days",))
    days = landing.get("retention_days", 90)
    if isinstance(days, bool) or not isinstance(days, int) or not 7 <= days <= 3650:
        raise doc.error("landing.retention_days", f"must be a whole number of days between 7 and 3650, got {days!r}")
    return PrivacySettings(months, interval, days)
