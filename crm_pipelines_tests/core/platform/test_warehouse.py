"""Which warehouse the code location and the command-line tools open, and with which driver."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.warehouse import Warehouse, postgres_url
from crm_pipelines.settings import NoWarehouse, Settings, cli_warehouse


@pytest.mark.postgres
def test_both_postgres_url_forms_open_the_warehouse_with_the_installed_driver(postgres_url):
    explicit = sa.engine.make_url(postgres_url)
    plain = explicit.set(drivername="postgresql").render_as_string(hide_password=False)
    assert plain.startswith("postgresql://")
    for url in (plain, postgres_url):
        wh = Warehouse(url)
        assert wh.engine.dialect.driver == "psycopg2"
        with wh.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS driver_probe (n int)")
            conn.exec_driver_sql("INSERT INTO driver_probe VALUES (1)")
        assert wh.scalar(sa.text("SELECT count(*) FROM driver_probe")) >= 1
        wh.engine.dispose()


def test_a_driver_that_is_not_installed_is_named_with_what_to_write_instead():
    with pytest.raises(ValueError, match=r"driver 'psycopg' is not installed.*postgresql\+psycopg2://") as err:
        postgres_url("postgresql+psycopg://etl:geheim@db.example/warehouse")
    assert "geheim" not in str(err.value)
    assert postgres_url("postgres://etl:x@db/wh").drivername == "postgresql+psycopg2"


def test_a_cli_without_the_warehouse_variable_stops_instead_of_creating_an_empty_sqlite(tmp_path, capsys):
    settings = Settings.from_env({"CRM_DATA_DIR": str(tmp_path / "data")})
    with pytest.raises(NoWarehouse, match="CRM_WAREHOUSE_URL is not set"):
        cli_warehouse(settings)
    assert "warehouse: sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_accept_match_rate_names_the_warehouse_and_refuses_without_a_run(tmp_path, capsys, monkeypatch):
    from crm_pipelines.matching.__main__ import main

    url = f"sqlite:///{tmp_path / 'wh' / 'warehouse.db'}"
    monkeypatch.setenv("CRM_WAREHOUSE_URL", url)
    assert main(["accept-match-rate", "--entity", "persons"]) == 1
    err = capsys.readouterr().err
    assert f"warehouse: {url} (CRM_WAREHOUSE_URL)" in err and "nothing to accept" in err
    Warehouse.dispose_all()
