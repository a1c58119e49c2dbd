"""The warehouse: one SQLAlchemy engine over SQLite files (default) or PostgreSQL.

Loads go through bulk paths: ``COPY`` on PostgreSQL, ``executemany`` on SQLite.
A partition is replaced in one transaction (delete, then insert), so re-running
it never duplicates rows and a failed run leaves the previous load intact.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .frames import compact_frame, concat_parts, copy_parser, frame_for_copy, rows_for_sqlite
from .schema import LAYERS

DEFAULT_DATA_DIR = Path(".crm_data")


# Rows a bulk insert converts and sends at a time (see Warehouse.bulk_insert).
INSERT_CHUNK_ROWS = 100_000


def default_url(data_dir: str | Path = DEFAULT_DATA_DIR) -> str:
    return f"sqlite:///{Path(data_dir) / 'warehouse.db'}"


def _sqlite_layer_path(main_db: Path, layer: str) -> Path:
    return main_db.with_name(f"{main_db.stem}.{layer}.db")


def describe_url(url: str) -> str:
    """The URL without its password, for logs and metadata."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class Warehouse:
    _cache: dict[str, "Warehouse"] = {}
    _lock = threading.Lock()

    def __init__(self, url: str):
        self.url = url
        self.engine = _make_engine(url)
        self.dialect = self.engine.dialect.name
        self._ensured: set[str] = set()
        self._guarded: set[str] = set()  # table guards installed once per process (audit triggers)

    @classmethod
    def for_url(cls, url: str) -> "Warehouse":
        with cls._lock:
            wh = cls._cache.get(url)
            if wh is None:
                wh = cls._cache[url] = Warehouse(url)
            return wh

    @classmethod
    def dispose_all(cls) -> None:
        with cls._lock:
            for wh in cls._cache.values():
                wh.engine.dispose()
            cls._cache.clear()

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    # ------------------------------------------------------------------ schema

    def ensure_tables(self, tables: Sequence[sa.Table]) -> None:
        """Creates layers and tables, and adds columns a newer model introduced (never drops).

        Safe when several step processes do it at once. Neither backend makes check-then-create
        atomic (Postgres fails with a duplicate key in pg_namespace, SQLite with "already exists"),
        so the DDL is serialised: by an advisory lock on Postgres, by a lock file beside SQLite's.
        """
        todo = [t for t in tables if t.fullname not in self._ensured]
        if not todo:
            return
        if self.is_postgres:
            self._create(todo)
        else:
            with _file_lock(Path(self.engine.url.database).with_suffix(".ddl.lock")):
                self._create(todo)
        self._ensured.update(t.fullname for t in todo)

    def _create(self, tables: Sequence[sa.Table]) -> None:
        with self.engine.begin() as conn:
            if self.is_postgres:
                # Postgres does not make CREATE ... IF NOT EXISTS atomic (duplicate key in
                # pg_namespace / pg_type when two sessions race); one lock serialises the DDL.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('crm_pipelines.ensure_tables'))")
                for layer in LAYERS:
                    conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{layer}"')
            for t in tables:
                t.create(conn, checkfirst=True)
                existing = {c["name"] for c in sa.inspect(conn).get_columns(t.name, schema=t.schema)}
                for col in t.columns:
                    if col.name not in existing:
                        coltype = col.type.compile(dialect=conn.dialect)
                        conn.exec_driver_sql(f"ALTER TABLE {self.qualified(t)} ADD COLUMN {self.quote(col.name)} {coltype}")

    @contextlib.contextmanager
    def exclusive(self, name: str):
        """Holds a named lock across processes for the block, or raises :class:`LockBusy` at once.

        Postgres: a session advisory lock on a connection kept open for the block; SQLite: a lock
        file. Both die with the process that holds them, so a killed run does not block the next.
        """
        if self.is_postgres:
            conn = self.engine.connect()
            try:
                got = conn.exec_driver_sql("SELECT pg_try_advisory_lock(hashtext(%(n)s))", {"n": name}).scalar()
                conn.commit()
                if not got:
                    raise LockBusy(name)
                try:
                    yield
                finally:
                    conn.exec_driver_sql("SELECT pg_advisory_unlock(hashtext(%(n)s))", {"n": name})
                    conn.commit()
            finally:
                conn.close()
        else:
            safe = "".join(ch if ch.isalnum() else "_" for ch in name)
            with _file_lock(Path(self.engine.url.database).with_suffix(f".{safe}.lock"), blocking=False):
                yield

    @contextlib.contextmanager
    def raw_writes(self, mode: str, log=None):
        """Keeps loads and privacy changes of the raw layer apart, across processes.

        Loads (``mode="load"``) share the lock with each other; an erasure or retention run
        (``mode="privacy"``) holds it alone. A load in flight when an erasure starts is finished and
        checked first (its counts and its balance check see one state), and a load that starts during
        an erasure waits for it, then screens with the new suppressions: neither can delete rows
        under the other's balance check, nor load a person back that was just erased. ``log`` hears
        once when the caller has to wait, and for what. Postgres: session advisory locks on a
        connection kept for the block; SQLite: ``flock`` on a file beside the warehouse. Both die
        with their process, so a killed run never blocks the next.
        """
        if mode not in ("load", "privacy"):
            raise ValueError(f"raw_writes mode {mode!r}: load or privacy")
        shared = mode == "load"
        waiting_for = "an erasure or retention run" if shared else "the loads or privacy runs in flight"
        if self.is_postgres:
            suffix = "_shared" if shared else ""
            conn = self.engine.connect()
            try:
                key = {"n": "crm_pipelines.raw_writes"}
                got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock{suffix}(hashtext(%(n)s))", key).scalar()
                if not got:
                    if log:
                        log(f"waiting for {waiting_for} to finish (raw layer)")
                    conn.exec_driver_sql(f"SELECT pg_advisory_lock{suffix}(hashtext(%(n)s))", key)
                conn.commit()
                try:
                    yield
                finally:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock{suffix}(hashtext(%(n)s))", key)
                    conn.commit()
            finally:
                conn.close()
            return
        path = Path(self.engine.url.database).with_suffix(".raw_writes.lock")
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(_file_lock(path, blocking=False, shared=shared))
            except LockBusy:
                if log:
                    log(f"waiting for {waiting_for} to finish (raw layer)")
                stack.enter_context(_file_lock(path, blocking=True, shared=shared))
            yield

    def quote(self, name: str) -> str:
        return self.engine.dialect.identifier_preparer.quote(name)

    def qualified(self, table: sa.Table) -> str:
        return f"{self.quote(table.schema)}.{self.quote(table.name)}" if table.schema else self.quote(table.name)

    # ------------------------------------------------------------------ writing

    def bulk_insert(self, conn: Connection, table: sa.Table, frame: pd.DataFrame, chunk_rows: int = INSERT_CHUNK_ROWS) -> int:
        """Inserts a DataFrame whose columns are a subset of the table's, through the bulk path
        (COPY on PostgreSQL), ``chunk_rows`` rows at a time in the caller's transaction: the text of
        a COPY or the row tuples for SQLite exist for one chunk only, never for a whole golden table."""
        if frame.empty:
            return 0
        cols = [c for c in table.columns.keys() if c in frame.columns]
        sql = (f"INSERT INTO {self.qualified(table)} ({', '.join(self.quote(c) for c in cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)})")  # SQLite's path
        for start in range(0, len(frame), chunk_rows):
            chunk = frame.iloc[start:start + chunk_rows][cols]
            if self.is_postgres:
                self._copy(conn, table, chunk)
            else:
                conn.connection.driver_connection.cursor().executemany(sql, rows_for_sqlite(chunk, table))
        return len(frame)

    def _copy(self, conn: Connection, table: sa.Table, frame: pd.DataFrame) -> None:
        buf = io.StringIO()
        frame_for_copy(frame, table).to_csv(buf, index=False, header=False, na_rep="", quoting=csv.QUOTE_MINIMAL,
                                              lineterminator="\n")
        buf.seek(0)
        cols = ", ".join(self.quote(c) for c in frame.columns)
        cursor = conn.connection.driver_connection.cursor()
        cursor.copy_expert(f"COPY {self.qualified(table)} ({cols}) FROM STDIN WITH (FORMAT csv)", buf)

    def delete_where(self, conn: Connection, table: sa.Table, **equals) -> int:
        cond = sa.and_(*(table.c[k] == v for k, v in equals.items()))
        return conn.execute(sa.delete(table).where(cond)).rowcount

    # ------------------------------------------------------------------ reading

    def read_frame(self, query: sa.Select | str, params: dict | None = None, chunk_rows: int = 100_000) -> pd.DataFrame:
        """A query's rows as object columns, missing values as None (no per-column type inference:
        five times faster on a million rows). See :func:`compact_frame` for how big results are read."""
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).execute(
                sa.text(query) if isinstance(query, str) else query, params or {})
            return compact_frame(result, chunk_rows)

    def read_select(self, query: sa.Select) -> pd.DataFrame:
        """:meth:`read_frame` for a big SELECT of table columns: through COPY on PostgreSQL (see
        :meth:`read_raw_sql`; timestamps come as ``datetime64[UTC]`` there), read_frame elsewhere.
        The bound values are written into the statement by SQLAlchemy's own literal rendering."""
        if not self.is_postgres:
            return self.read_frame(query)
        # paramstyle "named": with psycopg2's own, a % in a literal would be doubled, and COPY takes
        # the statement as it is.
        dialect = type(self.engine.dialect)(paramstyle="named")
        sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        return self.read_raw_sql(sql, types={c.name: c.type for c in query.selected_columns})

    def read_raw_sql(self, sql: str, chunk_rows: int = 100_000,
                     types: Mapping[str, sa.types.TypeEngine] | None = None) -> pd.DataFrame:
        """A query through the driver only (no SQLAlchemy type processing): fast for big reads.

        ``types``: the type of every column the query returns. On PostgreSQL the rows then come
        through ``COPY ... TO STDOUT`` as CSV, parsed by pandas, which is 2.3 times faster than the
        driver's Python objects (a million records of eleven columns: 2.6 s instead of 5.9 s); the
        values are the driver's (str, bool, int, float, None), only timestamps come as
        ``datetime64[UTC]`` and dates as ``datetime.date``. Columns of another type are read by the driver."""
        if types is not None and self.is_postgres and all(copy_parser(t) is not None for t in types.values()):
            return self._read_copy(sql, types, chunk_rows)
        with self.engine.connect() as conn:
            return compact_frame(conn.execution_options(stream_results=True, max_row_buffer=chunk_rows)
                                  .exec_driver_sql(sql), chunk_rows)

    def read_columns(self, table: sa.Table, columns: Sequence[str], key_range: "KeyRange | None" = None) -> pd.DataFrame:
        """These columns of a table with a ``record_key`` in record-key order, None for missing (COPY on
        PostgreSQL); ``key_range``: only the rows of that range of record keys."""
        where = f" WHERE {key_range.where_literal(self.quote)}" if key_range is not None else ""
        return self.read_raw_sql(f"SELECT {', '.join(self.quote(c) for c in columns)} FROM {self.qualified(table)}{where} "
                                 "ORDER BY record_key", types={c: table.c[c].type for c in columns})

    def _read_copy(self, sql: str, types: Mapping[str, sa.types.TypeEngine], chunk_rows: int) -> pd.DataFrame:
        parsers = {name: copy_parser(t) for name, t in types.items()}
        pools: list[dict | None] = [{} for _ in parsers]
        parts: dict[str, list] = {name: [] for name in parsers}
        # The CSV goes through a temporary file: COPY writes faster than pandas parses, and a pipe
        # between them would need a thread for little gain. NULL is written as \N so that an empty
        # string stays one; the price: a text value of exactly the two characters \N (the NULL of a
        # MySQL dump, say, landed as text in a raw table) reads as NULL.
        with self.engine.connect() as conn, tempfile.TemporaryFile() as buf:
            conn.connection.driver_connection.cursor().copy_expert(
                f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true, NULL '\\N')", buf)
            buf.seek(0)
            header = buf.readline().decode().rstrip("\n")
            names = next(csv.reader([header])) if header else []
            if sorted(names) != sorted(parsers):
                raise ValueError(f"the query returns the columns {names}, the types name {sorted(parsers)}")
            buf.seek(0)
            for chunk in pd.read_csv(buf, dtype=object, keep_default_na=False, na_values=["\\N"],
                                     chunksize=chunk_rows, encoding="utf-8"):
                for i, name in enumerate(names):
                    parts[name].append(parsers[name](chunk[name].to_numpy(dtype=object), pools, i))
        data = {name: concat_parts(parts.pop(name)) for name in names}
        # dtype=object: pandas 3 would make strings of the text columns, with NaN for None.
        rows = len(next(iter(data.values()))) if data else 0
        frame = pd.DataFrame({n: v for n, v in data.items() if not isinstance(v, pd.Series)},
                             index=pd.RangeIndex(rows), dtype=object)
        for name, values in data.items():
            if isinstance(values, pd.Series):  # timestamps, as datetime64[UTC]
                frame[name] = values
        return frame[names]

    def key_ranges(self, table: str, column: str, size: int) -> list[KeyRange]:
        """Slices of a table by one column, each with about ``size`` distinct values of it, in the
        database's own order (so ``<`` in a query agrees with how the bounds were found, whatever the
        collation): a step can then read, clean and write a table of any length one slice at a time.
        Every row is in exactly one slice (NULLs in the first). One slice when the table holds no
        more than ``size`` values. ``table`` is a qualified name (``raw."crm_contacts"``).

        Only the bounds are kept: the values stream past through a server-side cursor on PostgreSQL."""
        if size < 1:
            raise ValueError(f"a slice holds at least one value, not {size}")
        col = self.quote(column)
        bounds: list = []
        seen = 0
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, max_row_buffer=100_000).exec_driver_sql(
                f"SELECT DISTINCT {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY 1")
            while rows := result.fetchmany(100_000):
                # The value at every size-th position (after the first) opens a new slice.
                first = (-seen) % size if seen else size
                bounds.extend(rows[i][0] for i in range(first, len(rows), size))
                seen += len(rows)
        edges = [None, *bounds, None]
        return [KeyRange(column, lo, hi) for lo, hi in zip(edges, edges[1:])]

    def scalar(self, query: sa.Select | str, params: dict | None = None):
        with self.engine.connect() as conn:
            return conn.execute(sa.text(query) if isinstance(query, str) else query, params or {}).scalar()

    def execute_first(self, query: sa.Select | str, params: dict | None = None):
        """The first row of a query (a tuple), or None."""
        with self.engine.connect() as conn:
            return conn.execute(sa.text(query) if isinstance(query, str) else query, params or {}).first()


@dataclass(frozen=True)
class KeyRange:
    """``low <= column < high``; an open end is None (the first range also takes NULLs)."""

    column: str
    low: object | None
    high: object | None

    def where(self, quote) -> tuple[str, dict]:
        """The SQL condition (true for every row when both ends are open) and its bind parameters."""
        params = {k: v for k, v in (("low", self.low), ("high", self.high)) if v is not None}
        return self._condition(quote, ":low", ":high"), params

    def where_literal(self, quote) -> str:
        """:meth:`where` with the bounds written into the SQL as quoted text (for a read through COPY, which
        takes no bind parameters)."""
        literal = lambda v: "'" + str(v).replace("'", "''") + "'"  # noqa: E731
        return self._condition(quote, literal(self.low), literal(self.high))

    def _condition(self, quote, low: str, high: str) -> str:
        col = quote(self.column)
        parts = []
        if self.low is not None:
            parts.append(f"{col} >= {low}")
        if self.high is not None:
            parts.append(f"({col} < {high} OR {col} IS NULL)" if self.low is None else f"{col} < {high}")
        return " AND ".join(parts) or "1 = 1"


class LockBusy(Exception):
    """Another process holds the lock."""


@contextlib.contextmanager
def _file_lock(path: Path, blocking: bool = True, shared: bool = False):
    """A lock between processes on this machine (SQLite files are local by nature), exclusive unless
    ``shared`` (Windows: always exclusive). The operating system releases it when the process dies,
    so a killed run never leaves it behind."""
    with open(path, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
                    break
                except OSError as exc:  # LK_LOCK gives up after ten seconds; keep waiting
                    if not blocking:
                        raise LockBusy(str(path)) from exc
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(handle.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise LockBusy(str(path)) from exc
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _make_engine(url: str) -> Engine:
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError("the SQLite warehouse needs a file path (sqlite:///path/warehouse.db), not :memory:")
        main = Path(u.database).resolve()
        main.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(u.set(database=str(main)), connect_args={"timeout": 300})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=300000")
            for layer in LAYERS:
                cur.execute(f"ATTACH DATABASE ? AS {layer}", (str(_sqlite_layer_path(main, layer)),))
                # WAL lets readers (the UI, checks) work while a load is writing.
                cur.execute(f"PRAGMA {layer}.journal_mode=WAL")
            cur.close()

        return engine
    return sa.create_engine(postgres_url(u), pool_pre_ping=True)


# The one PostgreSQL driver the project installs (psycopg2-binary, which dagster-postgres needs as well).
# SQLAlchemy 2.1 maps a plain postgresql:// to psycopg 3, which is not installed: the README's URL form
# failed with "No module named 'psycopg'". Plain forms get the installed driver; another driver named
# explicitly gets an error that says what to write instead.
POSTGRES_DRIVER = "psycopg2"


def postgres_url(url: str | sa.engine.URL) -> sa.engine.URL:
    u = sa.engine.make_url(url)
    backend, _, driver = u.drivername.partition("+")
    if backend not in ("postgresql", "postgres"):
        return u
    if driver not in ("", POSTGRES_DRIVER):
        raise ValueError(f"warehouse URL {describe_url(url)}: the driver {driver!r} is not installed; the project's "
                         f"PostgreSQL driver is {POSTGRES_DRIVER}: write postgresql://... or "
                         f"postgresql+{POSTGRES_DRIVER}://...")
    return u.set(drivername=f"postgresql+{POSTGRES_DRIVER}")


def tables_present(wh: Warehouse, tables: Iterable[sa.Table]) -> bool:
    insp = sa.inspect(wh.engine)
    return all(insp.has_table(t.name, schema=t.schema) for t in tables)


def replace_table(wh: Warehouse, table: sa.Table, frame: pd.DataFrame, where: dict | None = None) -> None:
    """Replaces a table's rows (or those matching ``where``, column -> value) by ``frame`` in one transaction;
    columns of the frame the table does not have are left out."""
    wh.ensure_tables([table])
    cols = [c for c in table.columns.keys() if c in frame.columns]
    with wh.engine.begin() as conn:
        if where:
            wh.delete_where(conn, table, **where)
        else:
            conn.execute(sa.delete(table))
        wh.bulk_insert(conn, table, frame[cols])



IN_CHUNK = 2_000


def chunks(values: list, n: int = IN_CHUNK):
    """``values`` in slices of ``n``: the parameters of one ``IN (...)`` (SQLite and PostgreSQL both cap them)."""
    for i in range(0, len(values), n):
        yield values[i:i + n]


def select_in(wh: Warehouse, query: sa.Select, column: sa.ColumnElement, values) -> pd.DataFrame:
    """``query`` restricted to rows whose ``column`` is one of ``values`` (as text, missing ones dropped), read a
    slice of values at a time; no values: no rows (with the query's columns)."""
    values = sorted({str(v) for v in values if v is not None and v == v and v != ""})
    if not values:
        return wh.read_select(query.where(sa.false()))
    return pd.concat([wh.read_select(query.where(column.in_(part))) for part in chunks(values)], ignore_index=True)
