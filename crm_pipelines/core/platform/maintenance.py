"""Warehouse hygiene: how big each layer is, and giving space back (VACUUM).

SQLite keeps each layer in its own file (``warehouse.<layer>.db``): sizes are file sizes and
VACUUM runs per attached database. PostgreSQL reports its schemas' total relation sizes and
runs ``VACUUM (ANALYZE)`` outside a transaction, which also refreshes the planner's statistics.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from .schema import LAYERS
from .warehouse import Warehouse, _sqlite_layer_path


def warehouse_sizes(wh: Warehouse) -> dict[str, int]:
    """Bytes per layer (schema)."""
    if wh.is_postgres:
        with wh.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(:s) "
                "GROUP BY n.nspname"), {"s": list(LAYERS)}).all()
        sizes = {layer: 0 for layer in LAYERS}
        sizes.update({name: int(size) for name, size in rows})
        return sizes
    main = Path(wh.engine.url.database)
    out = {}
    for layer in LAYERS:
        path = _sqlite_layer_path(main, layer)
        out[layer] = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return out


def vacuum(wh: Warehouse) -> None:
    if wh.is_postgres:
        with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
        return
    wh.engine.dispose()  # pooled connections would keep the files busy
    with wh.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for layer in LAYERS:
            conn.exec_driver_sql(f"VACUUM {layer}")
            conn.exec_driver_sql(f"PRAGMA {layer}.wal_checkpoint(TRUNCATE)")
