"""Changes from the CRM, incrementally: what sales edited, deleted and merged since the last pull.

Per object type and pull:

1. **Read** what changed since the watermark (``ops.crm_pull_state``) through the search endpoint,
   oldest first, with a minute of overlap because the CRM's search index trails its writes by
   seconds; the first pull reads everything (paged list) to fill the mirror and lands nothing (the
   whole CRM comes in through ``crm_snapshot``). Then the archived (deleted) objects.
2. **Mirror** it in ``ops.crm_remote``: per CRM ID what the push policies read (the lifecycle stage,
   the company association, our ID property, and whether each CRM-owned or fill-when-empty field is
   filled, not its value),
   whether it is archived, and for a merged-away ID its survivor (``hs_merged_object_ids``).
3. **Follow merges and deletes** in ``ops.crm_sync_state``: a golden record pointing to a merged-away
   ID now points to the survivor (so nothing is created twice and nothing is sent to a dead ID); one
   pointing to a deleted object is marked ``deleted_in_crm``, and ``on_crm_delete`` decides whether
   the push leaves it alone or creates it anew.
4. **Land** the changed records as a delivery of the sources ``crm_contacts`` / ``crm_accounts``
   (``changes_<time>.json`` in the day's folder, the API's page shape), so sales' edits reach the
   golden records and their lineage with the CRM as source on the day's load.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import sqlalchemy as sa

from ..platform.schema import CRM_PULL_STATE, CRM_REMOTE, CRM_SYNC_STATE
from ..platform.warehouse import Warehouse
from ..sources.mapping import SourceMapping
from .hubspot import epoch_ms
from .protocol import CrmConnector
from .settings import SyncSettings
from .snapshot import SNAPSHOT_SOURCES, mapped_properties

Log = Callable[[str], None]
OVERLAP_MS = 60_000
# A change whose stamp is within this of our own write of that object is our write coming back.
ECHO_MS = 5_000
DELETED = "deleted_in_crm"
PAGE_RECORDS = 100


@dataclass
class ChangesReport:
    day: str
    changed: dict[str, int] = field(default_factory=dict)        # object type -> records read
    landed: dict[str, int] = field(default_factory=dict)         # object type -> records written to the landing zone
    echoes: dict[str, int] = field(default_factory=dict)         # object type -> our own writes coming back (not landed)
    archived: dict[str, int] = field(default_factory=dict)       # object type -> newly seen deletions
    merged: dict[str, int] = field(default_factory=dict)         # object type -> newly seen merged-away IDs
    repointed: dict[str, int] = field(default_factory=dict)      # sync-state rows moved to a survivor
    marked_deleted: dict[str, int] = field(default_factory=dict)  # sync-state rows whose object sales deleted
    restored: dict[str, int] = field(default_factory=dict)       # ... and whose object sales restored since
    full: dict[str, bool] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def pull_watermark(wh: Warehouse, object_type: str) -> int | None:
    """Up to which modification time (epoch ms) the incremental pull of ``object_type`` has read; None: never."""
    wh.ensure_tables([CRM_PULL_STATE])
    t = CRM_PULL_STATE
    return wh.scalar(sa.select(t.c.watermark_ms).where(t.c.object_type == object_type))


def set_pull_watermark(conn, object_type: str, watermark_ms: int, now: datetime, run_id: str) -> None:
    """Moves the watermark, in the transaction that wrote what was read."""
    t = CRM_PULL_STATE
    conn.execute(sa.delete(t).where(t.c.object_type == object_type))
    conn.execute(sa.insert(t).values(object_type=object_type, watermark_ms=watermark_ms, pulled_at=now, run_id=run_id))


def mirror_properties(settings: SyncSettings, object_type: str) -> list[str]:
    """The CRM fields the push policies read."""
    spec = settings.objects.get(object_type)
    names = {settings.id_property}
    if spec is not None:
        names |= {p for p, policy in spec.policies.items() if policy in ("crm", "fill_empty")}
        if "lifecyclestage" in spec.properties:
            names.add("lifecyclestage")
        if object_type == "contacts":
            names.add("associatedcompanyid")
    return sorted(names)


# Kept as values; of every other mirrored field only whether the CRM has one (data minimisation: the
# policies need no more, and the mirror then holds nothing personal but IDs).
VALUE_FIELDS = {"lifecyclestage", "associatedcompanyid"}


def pull_changes(wh: Warehouse, connector: CrmConnector, settings: SyncSettings, mappings: dict[str, SourceMapping],
                 landing: Path, day: str, run_id: str, log: Log | None = None,
                 object_types: tuple[str, ...] = ("companies", "contacts")) -> ChangesReport:
    log = log or (lambda _m: None)
    wh.ensure_tables([CRM_REMOTE, CRM_PULL_STATE, CRM_SYNC_STATE])
    report = ChangesReport(day)
    for object_type in object_types:
        source = SNAPSHOT_SOURCES[object_type]
        mirrored = mirror_properties(settings, object_type)
        wanted = sorted(set(mapped_properties(mappings[source])) | set(mirrored))
        watermark = pull_watermark(wh, object_type)
        started_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
        full = watermark is None
        report.full[object_type] = full
        objs = list(connector.read_objects(object_type, wanted) if full else
                    connector.changed_since(object_type, int(watermark) - OVERLAP_MS, wanted))
        report.changed[object_type] = len(objs)
        known = _remote(wh, object_type)
        fresh = [o for o in objs if _is_newer(o, known)]
        # Our own pushes change the CRM too: landing them would feed our values back in as the CRM's.
        ours = _our_writes(wh, object_type)
        # The first pull reads everything to fill the mirror; the whole CRM comes in through crm_snapshot.
        landed = [] if full else [o for o in fresh if not _echo(o, settings.id_property, ours)]
        report.echoes[object_type] = len(fresh) - len(landed)
        archived = [o for o in connector.read_objects(object_type, wanted, archived=True)]
        merges = _merges(objs)
        now = datetime.now(timezone.utc)
        new_archived = [o for o in archived if not _was_archived(o["id"], known)]
        new_merged = {a: s for a, s in merges.items() if known.get(a, {}).get("merged_into") != s}
        report.archived[object_type] = len(new_archived)
        report.merged[object_type] = len(new_merged)
        rows = [_mirror_row(object_type, o, mirrored, settings.id_property, False, None, now, run_id) for o in fresh]
        rows += [_mirror_row(object_type, o, mirrored, settings.id_property, True, None, now, run_id) for o in new_archived]
        rows += [{"object_type": object_type, "crm_id": a, "golden_id": known.get(a, {}).get("golden_id"),
                  "properties": None, "modified_at": now, "archived": False, "merged_into": s, "seen_at": now,
                  "run_id": run_id} for a, s in new_merged.items()]
        stamps = [m for m in (epoch_ms(_modified(o)) for o in objs) if m is not None]
        with wh.engine.begin() as conn:
            _upsert_remote(wh, conn, object_type, pd.DataFrame(rows))
            report.repointed[object_type] = _repoint(conn, object_type, merges)
            report.marked_deleted[object_type] = _mark_deleted(conn, object_type, [o["id"] for o in archived])
            report.restored[object_type] = _mark_restored(conn, object_type, [str(o["id"]) for o in objs])
            # Nothing read: the next pull starts where this one started (an empty CRM is not read in full again).
            new_mark = max(stamps) if stamps else (watermark if watermark is not None else started_ms)
            set_pull_watermark(conn, object_type, new_mark, now, run_id)
        if landed:
            report.files += _land(Path(landing) / source / day, landed, now, set(mapped_properties(mappings[source])))
        report.landed[object_type] = len(landed)
        log(f"{object_type}: {'full read' if full else 'changes'}: {len(objs):,} read, {len(landed):,} new or changed "
            f"landed ({report.echoes[object_type]:,} were our own writes), {len(new_archived):,} deleted in the CRM, "
            f"{len(new_merged):,} merged away; "
            f"{report.repointed[object_type]:,} golden records re-pointed to a survivor, "
            f"{report.marked_deleted[object_type]:,} marked deleted")
    return report


def load_remote(wh: Warehouse, object_type: str) -> pd.DataFrame:
    """``ops.crm_remote`` of a type: crm_id, golden_id, properties (dict), archived, merged_into."""
    wh.ensure_tables([CRM_REMOTE])
    t = CRM_REMOTE
    df = wh.read_frame(sa.select(t.c.crm_id, t.c.golden_id, t.c.properties, t.c.archived, t.c.merged_into)
                       .where(t.c.object_type == object_type))
    df["properties"] = [json.loads(p) if isinstance(p, str) and p else {} for p in df["properties"]]
    return df


def _remote(wh: Warehouse, object_type: str) -> dict[str, dict]:
    t = CRM_REMOTE
    df = wh.read_frame(sa.select(t.c.crm_id, t.c.golden_id, t.c.modified_at, t.c.archived, t.c.merged_into)
                       .where(t.c.object_type == object_type))
    return {str(r["crm_id"]): r for r in df.to_dict("records")}


def _our_writes(wh: Warehouse, object_type: str) -> dict[str, int]:
    """golden ID -> when we last wrote its CRM object (epoch ms)."""
    t = CRM_SYNC_STATE
    df = wh.read_frame(sa.select(t.c.golden_id, t.c.last_synced_at).where(
        t.c.object_type == object_type, t.c.last_status.in_(["created", "updated"])))
    stamps = pd.to_datetime(df["last_synced_at"], utc=True)
    return dict(zip(df["golden_id"], (int(t.timestamp() * 1000) for t in stamps)))


def _echo(obj: dict, id_property: str, ours: dict[str, int]) -> bool:
    golden_id = (obj.get("properties") or {}).get(id_property)
    written = ours.get(golden_id) if golden_id else None
    ms = epoch_ms(_modified(obj))
    return written is not None and ms is not None and ms <= written + ECHO_MS


def _modified(obj: dict):
    p = obj.get("properties") or {}
    return p.get("lastmodifieddate") or p.get("hs_lastmodifieddate") or obj.get("updatedAt")


def _is_newer(obj: dict, known: dict[str, dict]) -> bool:
    before = known.get(str(obj["id"]))
    if before is None or before.get("archived") or before.get("modified_at") is None:
        return True
    seen = pd.Timestamp(before["modified_at"])
    seen = seen.tz_localize("UTC") if seen.tzinfo is None else seen
    ms = epoch_ms(_modified(obj))
    return ms is None or ms > int(seen.timestamp() * 1000)


def _was_archived(crm_id: str, known: dict[str, dict]) -> bool:
    before = known.get(str(crm_id))
    return bool(before and before.get("archived"))


def _merges(objs: list[dict]) -> dict[str, str]:
    out = {}
    for o in objs:
        for alias in str((o.get("properties") or {}).get("hs_merged_object_ids") or "").split(";"):
            if alias.strip():
                out[alias.strip()] = str(o["id"])
    return out


def _mirror_row(object_type: str, obj: dict, names: list[str], id_property: str, archived: bool,
                merged_into: str | None, now: datetime, run_id: str) -> dict:
    props = obj.get("properties") or {}
    ms = epoch_ms(_modified(obj))
    return {"object_type": object_type, "crm_id": str(obj["id"]), "golden_id": props.get(id_property) or None,
            "properties": json.dumps({n: (props[n] if n in VALUE_FIELDS else True) for n in names
                                      if n != id_property and props.get(n) not in (None, "")}),
            "modified_at": datetime.fromtimestamp(ms / 1000, timezone.utc) if ms is not None else now,
            "archived": archived, "merged_into": merged_into, "seen_at": now, "run_id": run_id}


def _upsert_remote(wh: Warehouse, conn, object_type: str, rows: pd.DataFrame) -> None:
    if not len(rows):
        return
    rows = rows.drop_duplicates("crm_id", keep="last")
    t = CRM_REMOTE
    ids = rows["crm_id"].tolist()
    for start in range(0, len(ids), 500):
        conn.execute(sa.delete(t).where(t.c.object_type == object_type, t.c.crm_id.in_(ids[start:start + 500])))
    wh.bulk_insert(conn, t, rows)


def _repoint(conn, object_type: str, merges: dict[str, str]) -> int:
    """Golden records synced to a merged-away ID follow it to the survivor."""
    t = CRM_SYNC_STATE
    moved = 0
    for alias, survivor in merges.items():
        res = conn.execute(sa.update(t).where(t.c.object_type == object_type, t.c.crm_id == alias)
                           .values(crm_id=survivor, payload_hash=None,
                                   last_message=f"CRM merged {alias} into {survivor}"))
        moved += res.rowcount or 0
    return moved


def _mark_deleted(conn, object_type: str, archived_ids: list[str]) -> int:
    return _set_status(conn, object_type, archived_ids, CRM_SYNC_STATE.c.last_status != DELETED, DELETED,
                       "deleted (archived) in the CRM by a user")


def _mark_restored(conn, object_type: str, live_ids: list[str]) -> int:
    """A deleted record sales restored (HubSpot keeps deleted records restorable for 90 days) is pushed again."""
    return _set_status(conn, object_type, live_ids, CRM_SYNC_STATE.c.last_status == DELETED, "restored",
                       "restored in the CRM by a user")


def _set_status(conn, object_type: str, crm_ids: list[str], condition, status: str, message: str) -> int:
    """Sync-state rows of these CRM IDs (meeting ``condition``) get a new status and are sent again."""
    t = CRM_SYNC_STATE
    changed = 0
    for start in range(0, len(crm_ids), 500):
        res = conn.execute(sa.update(t).where(t.c.object_type == object_type, condition,
                                              t.c.crm_id.in_(crm_ids[start:start + 500]))
                           .values(last_status=status, payload_hash=None, last_message=message))
        changed += res.rowcount or 0
    return changed


def _land(folder: Path, objs: list[dict], now: datetime, allowed: set[str]) -> list[str]:
    """Pages into a hidden folder first, then moved in: a pull that dies halfway leaves no half delivery."""
    staging = folder.parent / f".changes-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    names = []
    try:
        stamp = now.strftime("%Y%m%dT%H%M%S")
        for n, start in enumerate(range(0, len(objs), PAGE_RECORDS), 1):
            # Only what the source's mapping reads: nothing it would have to quarantine as an unknown field.
            page = [{"id": o["id"], "properties": {k: v for k, v in (o.get("properties") or {}).items() if k in allowed},
                     "createdAt": o.get("createdAt"), "updatedAt": o.get("updatedAt"), "archived": False}
                    for o in objs[start:start + PAGE_RECORDS]]
            (staging / f"changes_{stamp}_{n:05d}.json").write_text(json.dumps({"results": page}, ensure_ascii=False),
                                                                   encoding="utf-8")
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.iterdir()):
            f.replace(folder / f.name)
            names.append(str(folder / f.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names
