"""The CRM snapshot pull: the CRM's companies and contacts, read page by page through the connector,
written into the landing zone exactly as the API returns them, for the sources ``crm_accounts`` and
``crm_contacts`` to load like any other delivery.

The pages are written into a hidden folder first and moved into ``<landing>/<source>/<day>/`` only
when every page arrived, so a pull that dies halfway never leaves half a snapshot for ingestion.
A second pull on the same day replaces the first one's pages (``pull_*.json``); other files of
that day stay. Only the properties the source's mapping knows are requested, so nothing arrives
that the mapping would have to quarantine as an unknown field.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..sources.mapping import SourceMapping
from .protocol import CrmConnector

SNAPSHOT_SOURCES = {"companies": "crm_accounts", "contacts": "crm_contacts"}
PAGE_PREFIX = "pull_"
PAGE_RECORDS = 100


@dataclass
class SnapshotReport:
    day: str
    objects: dict[str, int] = field(default_factory=dict)   # object type -> records
    pages: dict[str, int] = field(default_factory=dict)     # object type -> files written
    replaced_pages: int = 0
    folders: dict[str, str] = field(default_factory=dict)


def mapped_properties(mapping: SourceMapping) -> list[str]:
    """The CRM properties a mapping reads (``properties.<name>``, mapped or deliberately ignored)."""
    names = [f.source_field for f in mapping.fields] + sorted(mapping.ignored)
    return sorted({n.split(".", 1)[1] for n in names if n.startswith("properties.")})


def pull_snapshot(connector: CrmConnector, mappings: dict[str, SourceMapping], landing: Path, day: str,
                  object_types: tuple[str, ...] = ("companies", "contacts"),
                  progress: Callable[[str], None] | None = None) -> SnapshotReport:
    progress = progress or (lambda _m: None)
    report = SnapshotReport(day)
    for object_type in object_types:
        source = SNAPSHOT_SOURCES[object_type]
        mapping = mappings[source]
        target = Path(landing) / source / day
        staging = Path(landing) / source / f".pull-{day}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            page, records, n = [], 0, 0
            for obj in connector.read_objects(object_type, mapped_properties(mapping)):
                page.append(obj)
                if len(page) == PAGE_RECORDS:
                    n += 1
                    _write_page(staging, n, page)
                    records += len(page)
                    page = []
                    if n % 100 == 0:
                        progress(f"{object_type}: {records:,} records read")
            if page or n == 0:
                n += 1
                _write_page(staging, n, page)
                records += len(page)
            target.mkdir(parents=True, exist_ok=True)
            old = sorted(target.glob(f"{PAGE_PREFIX}*.json"))
            for f in old:
                f.unlink()
            for f in sorted(staging.iterdir()):
                f.replace(target / f.name)
            report.replaced_pages += len(old)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        report.objects[object_type] = records
        report.pages[object_type] = n
        report.folders[object_type] = str(target)
        progress(f"{object_type}: {records:,} records in {n:,} page(s) -> {target}")
    return report


def _write_page(folder: Path, n: int, results: list[dict]) -> None:
    # The API's own page shape, so the pulled files and an export from the CRM read the same way.
    (folder / f"{PAGE_PREFIX}{n:05d}.json").write_text(json.dumps({"results": results}, ensure_ascii=False),
                                                       encoding="utf-8")
