"""The scale part of bench_activation, one step per process (so each step's peak RSS is its own):

    python benchmarks/activation_scale.py build DIR N        # N golden contacts, scores, 3N behaviour events
    python benchmarks/activation_scale.py full DIR N         # every segment over every contact
    python benchmarks/activation_scale.py incremental DIR N  # 1,000 new events for 1,000 contacts, as the sensor does

Prints ``inner_seconds`` (the step alone, without the interpreter's start) and ``inner_evaluated``.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from crm_pipelines.core.activation.membership import (WATERMARK_KEY, affected_since, read_watermark,
                                                      update_segments, write_state)
from crm_pipelines.core.activation.segments import load_segments
from crm_pipelines.core.model import ENTITIES
from crm_pipelines.core.platform.schema import (GOLDEN_CONTACTS, LEAD_SCORES, PERSON_CROSSWALK, PERSON_RECORDS,
                                                raw_table)
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

NOW = datetime.now(timezone.utc)
TYPES = np.array(["page_view", "page_view", "page_view", "pricing_page", "demo_video", "whitepaper_download",
                  "webinar_attended", "email_open", "email_click"])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(wh: Warehouse, n: int) -> None:
    rng = np.random.default_rng(11)
    tables = [GOLDEN_CONTACTS, PERSON_RECORDS, PERSON_CROSSWALK, LEAD_SCORES]
    wh.ensure_tables(tables)
    chunk = 200_000
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        gid = np.char.add("K-", np.char.zfill(idx.astype(str), 8))
        email = np.char.add(np.char.add("p", idx.astype(str)), "@firma.de")
        seen = NOW - pd.to_timedelta(rng.integers(1, 700, len(idx)), unit="D")
        consent = np.where(rng.random(len(idx)) < 0.3, "granted", None)
        contacts = pd.DataFrame({"golden_id": gid, "first_name": "Vorname", "last_name": "Nachname", "email": email,
                                 "email_consent": consent, "record_count": 1, "sources": "web_form_leads",
                                 "first_seen_at": seen, "last_seen_at": NOW, "run_id": "bench"})
        records = pd.DataFrame({"record_key": np.char.add("web_form_leads:", idx.astype(str)), "source": "web_form_leads",
                                "source_record_id": idx.astype(str), "email_norm": email})
        xwalk = pd.DataFrame({"record_key": records["record_key"], "source": "web_form_leads",
                              "source_record_id": records["source_record_id"], "golden_id": gid,
                              "valid_from": NOW - timedelta(days=1), "run_id": "bench"})
        stage = rng.choice(np.array(["lead", "lead", "lead", "mql", "sql"]), len(idx))
        scores = pd.DataFrame({"golden_id": gid, "score": rng.integers(0, 100, len(idx)).astype(float), "stage": stage,
                               "explanation": "[]", "scored_at": NOW, "run_id": "bench"})
        with wh.engine.begin() as conn:
            for t, frame in zip(tables, (contacts, records, xwalk, scores)):
                wh.bulk_insert(conn, t, frame)
        _log(f"contacts {min(n, start + chunk):,} / {n:,}")
    events_total = 3 * n
    t = raw_table("behaviour_events", ENTITIES["behaviour_event"])
    wh.ensure_tables([t])
    for start in range(0, events_total, 500_000):
        m = min(500_000, events_total - start)
        who = rng.integers(0, n, m)
        at = NOW - pd.to_timedelta(rng.integers(60, 90 * 86400, m), unit="s")
        frame = pd.DataFrame({"_partition": at.strftime("%Y-%m-%d"), "_file": "bench.jsonl", "_record_no": np.arange(m) + 1,
                              "_run_id": "bench", "_loaded_at": NOW - timedelta(days=1),
                              "source_record_id": np.char.add("ev", (np.arange(m) + start).astype(str)),
                              "event_type": TYPES[rng.integers(0, len(TYPES), m)], "occurred_at": at,
                              "email": np.char.add(np.char.add("p", who.astype(str)), "@firma.de")})
        with wh.engine.begin() as conn:
            wh.bulk_insert(conn, t, frame)
        _log(f"events {start + m:,} / {events_total:,}")


def full(wh: Warehouse) -> None:
    segments = load_segments(DEFAULT_CONFIG_DIR / "segments")
    started = time.perf_counter()
    res = update_segments(wh, segments, "bench-full")
    write_state(wh, WATERMARK_KEY, (NOW - timedelta(minutes=1)).isoformat())
    print(f"inner_seconds {time.perf_counter() - started:.3f}")
    print(f"inner_evaluated {res.evaluated}")
    _log(f"sizes {res.sizes}")


def incremental(wh: Warehouse, n: int) -> None:
    rng = np.random.default_rng(12)
    who = rng.choice(n, 1000, replace=False)
    t = raw_table("behaviour_events", ENTITIES["behaviour_event"])
    loaded = datetime.now(timezone.utc)
    frame = pd.DataFrame({"_partition": loaded.strftime("%Y-%m-%d"), "_file": "new.jsonl", "_record_no": np.arange(1000) + 1,
                          "_run_id": "bench-new", "_loaded_at": loaded,
                          "source_record_id": np.char.add("new", np.arange(1000).astype(str)),
                          "event_type": "whitepaper_download", "occurred_at": loaded,
                          "email": np.char.add(np.char.add("p", who.astype(str)), "@firma.de")})
    with wh.engine.begin() as conn:
        wh.bulk_insert(conn, t, frame)
    segments = load_segments(DEFAULT_CONFIG_DIR / "segments")
    watermark = read_watermark(wh)
    started = time.perf_counter()
    affected, newest, rows = affected_since(wh, watermark)
    res = update_segments(wh, segments, "bench-incremental", only=sorted(affected))
    print(f"inner_seconds {time.perf_counter() - started:.3f}")
    print(f"inner_evaluated {res.evaluated}")
    _log(f"rows read {rows}, affected {len(affected)}, entered {res.entered}, left {res.left}")


if __name__ == "__main__":
    step, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    wh = Warehouse(f"sqlite:///{folder / 'warehouse.db'}")
    {"build": lambda: build(wh, n), "full": lambda: full(wh), "incremental": lambda: incremental(wh, n)}[step]()
