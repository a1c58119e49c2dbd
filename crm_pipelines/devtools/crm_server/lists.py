"""HubSpot's Lists v3 (segments) as the local CRM serves them: create, look up by name, membership add,
remove and read. Membership changes only on MANUAL and SNAPSHOT lists, as HubSpot documents."""

from __future__ import annotations

from .protocol import not_found, now_iso, validation_error

OBJECT_TYPE_IDS = {"0-1": "contacts", "0-2": "companies"}
PROCESSING_TYPES = ("MANUAL", "DYNAMIC", "SNAPSHOT")
MAX_MEMBERSHIP_IDS = 100_000


class ListsMixin:
    def _lists_schema(self) -> None:
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS lists (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                object_type_id TEXT NOT NULL, processing_type TEXT NOT NULL, created_at TEXT NOT NULL,
                created_by_api INTEGER NOT NULL DEFAULT 1);
            CREATE TABLE IF NOT EXISTS list_members (list_id INTEGER, record_id INTEGER, added_at TEXT NOT NULL,
                PRIMARY KEY (list_id, record_id));
        """)

    def _list_json(self, row) -> dict:
        lid, name, otype, ptype, created = row[:5]
        size = self.db.execute("SELECT COUNT(*) FROM list_members WHERE list_id = ?", (lid,)).fetchone()[0]
        return {"listId": str(lid), "name": name, "objectTypeId": otype, "processingType": ptype,
                "processingStatus": "COMPLETE", "createdAt": created, "updatedAt": created, "listVersion": 1,
                "size": size}

    def create_list(self, body: dict) -> tuple[int, dict]:
        unknown = set(body) - {"name", "objectTypeId", "processingType", "filterBranch", "listFolderId",
                               "customProperties", "membershipSettings"}
        if unknown:
            return 400, validation_error(f"Unrecognized field: {sorted(unknown)[0]}")
        name, otype, ptype = body.get("name"), body.get("objectTypeId"), body.get("processingType")
        if not isinstance(name, str) or not name.strip():
            return 400, validation_error("name is required")
        if otype not in OBJECT_TYPE_IDS:
            return 400, validation_error(f"objectTypeId must be one of {sorted(OBJECT_TYPE_IDS)}")
        if ptype not in PROCESSING_TYPES:
            return 400, validation_error(f"processingType must be one of {', '.join(PROCESSING_TYPES)}")
        with self._lock:
            if self.db.execute("SELECT 1 FROM lists WHERE name = ?", (name,)).fetchone():
                return 400, {**validation_error(f"A list named '{name}' already exists."), "subCategory": "DUPLICATE_NAME"}
            cur = self.db.execute("INSERT INTO lists (name, object_type_id, processing_type, created_at) VALUES (?,?,?,?)",
                                  (name, otype, ptype, now_iso()))
            row = self.db.execute("SELECT * FROM lists WHERE id = ?", (cur.lastrowid,)).fetchone()
            return 200, {"list": self._list_json(row)}

    def make_foreign_list(self, name: str, record_ids: list[str]) -> str:
        """A list a sales rep built by hand in the CRM (not through the API)."""
        with self._lock:
            cur = self.db.execute("INSERT INTO lists (name, object_type_id, processing_type, created_at, created_by_api) "
                                  "VALUES (?,?,?,?,0)", (name, "0-1", "MANUAL", now_iso()))
            for rid in record_ids:
                self.db.execute("INSERT OR IGNORE INTO list_members VALUES (?,?,?)", (cur.lastrowid, int(rid), now_iso()))
            return str(cur.lastrowid)

    def list_by_name(self, object_type_id: str, name: str) -> tuple[int, dict]:
        with self._lock:
            row = self.db.execute("SELECT * FROM lists WHERE name = ? AND object_type_id = ?", (name, object_type_id)).fetchone()
            return (200, {"list": self._list_json(row)}) if row else (404, not_found(f"List with name {name} not found"))

    def _list_row(self, list_id: str):
        return self.db.execute("SELECT * FROM lists WHERE id = ?", (int(list_id),)).fetchone() if list_id.isdigit() else None

    def change_members(self, list_id: str, body, add: bool) -> tuple[int, dict]:
        with self._lock:
            row = self._list_row(list_id)
            if row is None:
                return 404, not_found(f"List {list_id} does not exist")
            if row[3] == "DYNAMIC":
                return 400, validation_error("Memberships of DYNAMIC lists cannot be changed through the API")
            if not isinstance(body, list) or not all(isinstance(r, (str, int)) and str(r).isdigit() for r in body):
                return 400, validation_error("the body must be an array of record IDs")
            if len(body) > MAX_MEMBERSHIP_IDS:
                return 400, validation_error(f"at most {MAX_MEMBERSHIP_IDS} record IDs per request")
            otype = OBJECT_TYPE_IDS[row[2]]
            done, missing = [], []
            for rid in dict.fromkeys(str(r) for r in body):
                exists = self.db.execute("SELECT 1 FROM objects WHERE type = ? AND id = ? AND archived = 0",
                                         (otype, int(rid))).fetchone()
                if add:
                    if not exists:
                        missing.append(rid)
                        continue
                    cur = self.db.execute("INSERT OR IGNORE INTO list_members VALUES (?,?,?)", (int(list_id), int(rid), now_iso()))
                else:
                    cur = self.db.execute("DELETE FROM list_members WHERE list_id = ? AND record_id = ?", (int(list_id), int(rid)))
                    if cur.rowcount and not row[5]:
                        self.counts["foreign_list_removals"] += 1
                (done if cur.rowcount else missing).append(rid)
            self.counts["list_adds" if add else "list_removals"] += len(done)
            key = "recordIdsAdded" if add else "recordIdsRemoved"
            return 200, {key: done, "recordIdsMissing": missing}

    def read_members(self, list_id: str, query: dict) -> tuple[int, dict]:
        with self._lock:
            if self._list_row(list_id) is None:
                return 404, not_found(f"List {list_id} does not exist")
            limit = min(int((query.get("limit") or ["100"])[0]), 250)
            after = int((query.get("after") or ["0"])[0] or 0)
            rows = self.db.execute("SELECT record_id, added_at FROM list_members WHERE list_id = ? AND record_id > ? "
                                   "ORDER BY record_id LIMIT ?", (int(list_id), after, limit + 1)).fetchall()
        out = {"results": [{"recordId": str(r), "membershipTimestamp": t} for r, t in rows[:limit]]}
        if len(rows) > limit:
            out["paging"] = {"next": {"after": str(rows[limit - 1][0])}}
        return 200, out
