"""Day one in production: the things a first week does to the pipeline that no operator should have to fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import dagster as dg
import pytest
import sqlalchemy as sa

from crm_pipelines.core.platform.schema import ALERT_LEDGER, GOLDEN_CONTACTS, LANDING_FILES, MATCH_RUNS, raw_table
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.core.print.release import ERASURE_COPIES
from crm_pipelines.core.privacy.erasure import erase
from crm_pipelines.core.privacy_screen.identity import IdentityHasher, load_or_create_salt
from crm_pipelines.core.sources.mapping import load_mappings
from crm_pipelines.definitions import build_defs
from crm_pipelines.defs import sources as sources_defs
from crm_pipelines.defs.resources import LOCAL_CRM_URL, CrmResource, LandingZoneResource, WarehouseResource
from crm_pipelines.defs.sources import raw_asset_key
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines.devtools.processes import wait_until
from crm_pipelines.nightly.__main__ import rebuild_plan
from crm_pipelines_tests.conftest import READY_PORTAL, copy_config, put
from crm_pipelines_tests.defs.test_crm import TOKEN
from crm_pipelines_tests.defs.test_sources import run_range, settings_for


DAY = "2026-11-10"


def _lead(n: int, email: str, last: str) -> str:
    return json.dumps({"lead_id": f"WF-20261110-{n:06d}", "submitted_at": "2026-11-10T09:15:00+01:00", "form": "kontakt",
                       "salutation": "Frau", "first_name": "Anna", "last_name": last, "email": email,
                       "company_name": "Beispiel Hydraulik GmbH", "zip": "20095", "city": "Hamburg", "country": "DE",
                       "newsletter_opt_in": False}, ensure_ascii=False)


def test_an_erasure_arriving_during_an_ingest_waits_for_it_and_the_night_stays_balanced(
        tmp_path, landing, warehouse_url, monkeypatch, mappings):
    erased = "anna.loeschmann@beispiel-hydraulik.de"
    put(landing, "web_form_leads", DAY, "leads_0000.jsonl",
        "\n".join([_lead(1, erased, "Löschmann"), _lead(2, "anna.bleibt@beispiel-hydraulik.de", "Bleibtreu")]) + "\n")
    monkeypatch.setenv("CRM_WAREHOUSE_URL", warehouse_url)  # the resource reads it through EnvVar
    settings = settings_for(tmp_path, landing, url=warehouse_url)
    defs = build_defs(settings)

    # The load pauses after writing its partition, before its balance check, until the erasure is waiting.
    loaded, erasure_waiting = threading.Event(), threading.Event()
    real = sources_defs.ingest_partition

    def paused(*args, **kwargs):
        report = real(*args, **kwargs)
        loaded.set()
        assert erasure_waiting.wait(120), "the erasure never reached the lock"
        return report

    monkeypatch.setattr(sources_defs, "ingest_partition", paused)
    outcome: dict = {}
    with dg.instance_for_test() as instance:
        ingest = threading.Thread(target=lambda: outcome.update(result=run_range(
            defs, instance, DAY, DAY, selection=[raw_asset_key("web_form_leads")], raise_on_error=False)))
        ingest.start()
        assert loaded.wait(120)
        wh = Warehouse.for_url(warehouse_url)
        messages: list[str] = []

        def log(message: str) -> None:
            messages.append(message)
            if message.startswith("waiting for the loads or privacy runs in flight"):
                erasure_waiting.set()

        report = erase(wh, IdentityHasher(load_or_create_salt(settings.salt_file)), mappings,
                       copies=ERASURE_COPIES, emails=[erased],
                       request_id="req-during-ingest", source="test", actor="test", log=log)
        erasure_waiting.set()  # should the erasure not have waited, the load must not hang the test
        ingest.join(120)

    result = outcome["result"]
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["rows_balance"] is True
    assert messages[0] == "waiting for the loads or privacy runs in flight to finish (raw layer)"
    # The erasure ran after the load: it found the row the load wrote and took it out.
    assert report.tables.get("raw.web_form_leads") == 1
    t = raw_table("web_form_leads", mappings["web_form_leads"].entity)
    assert set(wh.read_frame(sa.select(t.c.email))["email"]) == {"anna.bleibt@beispiel-hydraulik.de"}


def _tick(defs, instance, name: str, resources: dict, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = defs.resolve_sensor_def(name).evaluate_tick(ctx)
    return result.run_requests or [], result.cursor, result.skip_message


def test_the_lead_sensor_starts_from_now_and_leaves_older_deliveries_to_the_nightly_load(tmp_path, landing):
    from crm_pipelines_tests.defs.test_scoring import HEADER, TODAY, scan

    for n in range(3):  # weeks-old scans already in the landing zone when the daemon first starts
        old = put(landing, "trade_fair_leads", TODAY, f"sps_old_{n}.csv", HEADER + scan(f"TF-O-{n}", "Alt", "Scan", "a@b.de"))
        weeks_ago = old.stat().st_mtime - 21 * 86400
        os.utime(old, (weeks_ago, weeks_ago))
    defs = build_defs(settings_for(tmp_path, landing))
    resources = {"landing": LandingZoneResource(root=str(landing))}
    with dg.instance_for_test() as instance:
        requests_, cursor, skipped = _tick(defs, instance, "new_leads", resources)
        assert requests_ == [] and cursor
        assert skipped == "3 file(s) left to the nightly load (first start); watching from now"

        fresh = put(landing, "trade_fair_leads", TODAY, "sps_new.csv", HEADER + scan("TF-N-1", "Neu", "Scan", "n@b.de"))
        requests_, cursor, _ = _tick(defs, instance, "new_leads", resources, cursor)
        assert [r.tags["crm/landing_file"] for r in requests_] == [f"trade_fair_leads/{TODAY}/{fresh.name}"]

        # A file that landed two hours ago while the daemon was down: the nightly load's, not an alert.
        late = put(landing, "trade_fair_leads", TODAY, "sps_late.csv", HEADER + scan("TF-L-1", "Spät", "Scan", "l@b.de"))
        two_hours_ago = late.stat().st_mtime - 7200
        os.utime(late, (two_hours_ago, two_hours_ago))
        requests_, cursor, skipped = _tick(defs, instance, "new_leads", resources, cursor)
        assert requests_ == [] and skipped.startswith("1 file(s) left to the nightly load (older than 60 minutes)")
        assert _tick(defs, instance, "new_leads", resources, cursor)[0] == []

    # A scan that lands while the daemon comes up (seconds before the first tick) is a new lead all the same.
    other = tmp_path / "landing2"
    old = put(other, "trade_fair_leads", TODAY, "sps_old.csv", HEADER + scan("TF-O-9", "Alt", "Scan", "a@b.de"))
    os.utime(old, (weeks_ago, weeks_ago))
    just = put(other, "trade_fair_leads", TODAY, "sps_just.csv", HEADER + scan("TF-J-1", "Gerade", "Scan", "j@b.de"))
    with dg.instance_for_test() as instance:
        requests_, _, _ = _tick(defs, instance, "new_leads", {"landing": LandingZoneResource(root=str(other))})
        assert [r.tags["crm/landing_file"] for r in requests_] == [f"trade_fair_leads/{TODAY}/{just.name}"]


def test_the_sla_sensor_is_quiet_until_a_hand_off_is_due_and_says_so_when_there_is_no_crm(tmp_path, landing, sqlite_url):
    wh = Warehouse.for_url(sqlite_url)
    wh.ensure_tables([ALERT_LEDGER])
    now = datetime.now(timezone.utc)
    with wh.engine.begin() as conn:
        conn.execute(sa.insert(ALERT_LEDGER).values(alert_key="lead:trade_fair_leads:TF-1", kind="trade_fair_lead",
                                                    created_at=now, due_at=now + timedelta(hours=2), status="notified",
                                                    task_crm_id="1"))
    defs = build_defs(settings_for(tmp_path, landing))
    with dg.instance_for_test() as instance:
        def tick(crm_url: str):
            return _tick(defs, instance, "sla", {"warehouse": WarehouseResource(url=sqlite_url),
                                                 "crm": CrmResource(base_url=crm_url)})

        requests_, _, skipped = tick(LOCAL_CRM_URL)
        assert requests_ == [] and skipped == "no hand-off near or past its due time"
        with wh.engine.begin() as conn:
            conn.execute(sa.update(ALERT_LEDGER).values(due_at=now + timedelta(minutes=5)))
        requests_, _, skipped = tick(LOCAL_CRM_URL)  # nothing listens on the local CRM's port here
        assert requests_ == [] and skipped.startswith("1 hand-off(s) due for a check, but no CRM: CRM_API_URL is not set")
        with CrmServer() as crm:
            requests_, _, _ = tick(crm.url)
        assert len(requests_) == 1 and requests_[0].tags["crm/sla_due"] == "1"


# ---------------------------------------------------------------------------- a first week, end to end

CHAIN_SENSORS = {"nightly_chain_golden": "ingest_sources", "nightly_chain_outlets": "build_golden"}  # -> job watched
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class Daemon:
    """What dagster-daemon does for the chain, through the same instance APIs: a finished run's status
    sensors are evaluated, their run requests launched once per run key, until nothing follows."""

    def __init__(self, defs, instance):
        self.defs, self.instance, self.keys, self.results = defs, instance, set(), []

    def launch(self, job: str, tags: dict, run_config: dict | None = None, selection=None):
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags, run_config={**QUIET, **(run_config or {})}, raise_on_error=False,
            asset_selection=selection)
        self.results.append(result)
        return result

    def follow(self, result) -> list:
        queue, chain = [result], [result]
        while queue:
            done = queue.pop(0)
            if not done.success:
                continue
            run = self.instance.get_run_by_id(done.run_id)
            for name, watched in CHAIN_SENSORS.items():
                sensor = self.defs.resolve_sensor_def(name)
                if run.job_name != watched:
                    continue
                ctx = dg.build_run_status_sensor_context(sensor_name=name, dagster_instance=self.instance,
                                                         dagster_run=run, dagster_event=done.get_run_success_event())
                out = sensor(ctx)
                single = out is None or isinstance(out, (dg.RunRequest, dg.SkipReason))
                for request in ([out] if single else list(out)):
                    if not isinstance(request, dg.RunRequest) or request.run_key in self.keys:
                        continue
                    self.keys.add(request.run_key)
                    job = request.job_name or sensor.job_name
                    nxt = self.launch(job, dict(request.tags), request.run_config)
                    queue.append(nxt)
                    chain.append(nxt)
        return chain

    def night(self, first: str, last: str | None = None) -> list:
        label = first if last in (None, first) else f"{first}..{last}"
        return self.follow(self.launch("ingest_sources", {
            "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last or first,
            "crm/nightly": label}))


def green(chain) -> list[str]:
    """What is not green about a chain: failed runs and failed checks of error severity."""
    bad = [f"run {r.dagster_run.job_name} failed" for r in chain if not r.success]
    bad += [f"{e.asset_key.to_user_string()}:{e.check_name}" for r in chain for e in r.get_asset_check_evaluations()
            if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    return bad


@pytest.mark.postgres
def test_a_first_week_on_postgres_runs_green_without_an_operator(tmp_path, demo_landing, postgres_url, postgres_server,
                                                                 monkeypatch):
    src, manifest = demo_landing
    landing = tmp_path / "landing"
    shutil.copytree(src, landing)
    days = manifest["partitions"]
    empty_night = (date.fromisoformat(days[0]) - timedelta(days=1)).isoformat()
    config = copy_config(tmp_path)
    instance_db = sa.engine.make_url(postgres_url).set(database=f"{sa.engine.make_url(postgres_url).database}_dagster")
    admin = sa.create_engine(postgres_server.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{instance_db.database}"')
    monkeypatch.setenv("CRM_WAREHOUSE_URL", postgres_url)
    monkeypatch.setenv("CRM_API_TOKEN", TOKEN)
    with CrmServer(token=TOKEN, custom_properties=READY_PORTAL) as crm, dg.instance_for_test(overrides={
            "storage": {"postgres": {"postgres_url": instance_db.render_as_string(hide_password=False)}}}) as instance:
        crm.seed_from_landing(landing)
        settings = replace(settings_for(tmp_path, landing, config=config, url=postgres_url), crm_url=crm.url)
        daemon = Daemon(build_defs(settings), instance)
        wh = Warehouse.for_url(postgres_url)

        # Night 0: nothing delivered yet. Every step runs on empty input; no match-rate baseline is stored.
        chain = daemon.night(empty_night)
        assert [r.dagster_run.job_name for r in chain] == ["ingest_sources", "build_golden", "push_crm", "score_leads"]
        assert green(chain) == []
        assert wh.scalar(sa.select(sa.func.count()).select_from(MATCH_RUNS).where(MATCH_RUNS.c.accepted)) == 0

        # Nights 1 and 2 with data; during night 2 an erasure request arrives while the load is in flight.
        assert green(daemon.night(days[0])) == []
        erased = json.loads((landing / "web_form_leads" / days[1]).glob("*.jsonl").__next__()
                            .read_text(encoding="utf-8").splitlines()[0])["email"]
        loaded, erasure_waiting = threading.Event(), threading.Event()
        real = sources_defs.ingest_partition

        def paused(mapping, partition, *args, **kwargs):
            report = real(mapping, partition, *args, **kwargs)
            if mapping.source == "web_form_leads" and not loaded.is_set():
                loaded.set()
                erasure_waiting.wait(120)
            return report

        monkeypatch.setattr(sources_defs, "ingest_partition", paused)
        erasure: dict = {}
        night = threading.Thread(target=lambda: erasure.update(chain=daemon.night(days[1])))
        night.start()
        assert loaded.wait(300)
        watcher = threading.Thread(target=lambda: erasure.update(run=daemon.launch(
            "erase_person", {"crm/privacy": "erasure"}, {"ops": {"erase_one": {"config": {"email": erased}}}})))
        watcher.start()
        # The erasure's step waits for the raw layer (it logs so): then the load may go on.
        wait_until(lambda: any("waiting for the loads or privacy runs in flight" in (e.user_message or "")
                               for e in instance.all_logs(_latest_run_id(instance, "erase_person") or "-")), 120,
                   "the erasure waiting for the load")
        erasure_waiting.set()
        night.join(600)
        watcher.join(300)
        monkeypatch.setattr(sources_defs, "ingest_partition", real)
        assert green(erasure["chain"]) == [] and erasure["run"].success
        assert erased not in set(wh.read_frame(sa.select(GOLDEN_CONTACTS.c.email))["email"].dropna())

        # Night 3: the load is killed mid-way (OOM kill, reboot), run monitoring marks it failed, and the
        # night is run again: the partitions it had half written are replaced, the chain is green.
        killed = _killed_ingest(tmp_path, instance_db, settings, days[2])
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
        assert green(daemon.night(days[2])) == []

        # A mapping edit: the check names the days built with the old version, the rebuild reloads exactly
        # the days with a delivery, and golden, scores and push follow once, after the last load.
        mapping_file = config / "mappings" / "web_form_leads.yaml"
        mapping_file.write_text(mapping_file.read_text(encoding="utf-8").replace(
            "city: {target: city, transforms: [trim]}", "city: {target: city, transforms: [trim, collapse_whitespace]}"),
            encoding="utf-8")
        daemon.defs = build_defs(settings)
        check_run = daemon.launch("check_mapping_versions", {})
        (evaluation,) = [e for e in check_run.get_asset_check_evaluations()
                         if e.asset_key == raw_asset_key("web_form_leads")]
        assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
        delivered = [d for d in days[:3] if any((landing / "web_form_leads" / d).glob("*.jsonl"))]
        assert evaluation.metadata["to_rebuild"].value == len(delivered)
        plan = rebuild_plan(wh, load_mappings(config), landing, ["web_form_leads"])
        assert sorted(d for _, a, b in plan for d in _days(a, b)) == delivered  # not the empty night
        group = "test-rebuild"
        chain = []
        for source, a, b in plan:
            load = daemon.launch("ingest_sources", {
                "dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b,
                "crm/rebuild": group, "crm/rebuild_runs": str(len(plan)), "crm/nightly": f"rebuild-{group}"},
                selection=[raw_asset_key(source)])
            chain += daemon.follow(load)
        assert [r.dagster_run.job_name for r in chain].count("build_golden") == 1
        assert green(chain) == []
        after = daemon.launch("check_mapping_versions", {})
        assert all(e.passed for e in after.get_asset_check_evaluations())

    every = [f"{r.dagster_run.job_name}" for r in daemon.results if not r.success]
    assert every == []


def _days(first: str, last: str) -> list[str]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def _latest_run_id(instance, job: str) -> str | None:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job), limit=1)
    return runs[0].run_id if runs else None


def _killed_ingest(tmp_path, instance_db, settings, day: str) -> str:
    """An ingest run in its own process, killed once it has written a partition; then what run monitoring
    does about a run whose process is gone: the run is marked failed."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(json.dumps({"storage": {"postgres": {
        "postgres_url": instance_db.render_as_string(hide_password=False)}}, "telemetry": {"enabled": False}}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "CRM_LANDING_DIR": str(settings.landing_dir),
           "CRM_DATA_DIR": str(settings.data_dir), "CRM_CONFIG_DIR": str(settings.config_dir),
           "CRM_API_URL": settings.crm_url, "CRM_EXECUTOR": "in_process"}
    wh = Warehouse.for_url(settings.warehouse_url)
    proc = subprocess.Popen([sys.executable, "-m", "dagster", "job", "execute", "-m", "crm_pipelines.definitions",
                             "-a", "defs", "-j", "ingest_sources", "--tags", json.dumps({
                                 "dagster/asset_partition_range_start": day, "dagster/asset_partition_range_end": day,
                                 "crm/nightly": day})], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def wrote_a_partition() -> bool:
            assert proc.poll() is None, "the load ended before it could be killed"
            run_id = _run_of(instance_db, "ingest_sources", day)
            return run_id is not None and bool(wh.scalar(sa.select(sa.func.count()).select_from(LANDING_FILES).where(
                LANDING_FILES.c.partition == day, LANDING_FILES.c.run_id == run_id)))

        wait_until(wrote_a_partition, 180, "the load writing its first partition")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    run_id = _run_of(instance_db, "ingest_sources", day)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.STARTED  # nobody told the instance: the process just died
        instance.report_run_failed(run)  # run monitoring's verdict on a run whose worker is gone
    return run_id


def _run_of(instance_db, job: str, day: str) -> str | None:
    engine = sa.create_engine(instance_db)
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT run_id FROM runs WHERE pipeline_name = %(job)s AND run_body LIKE %(day)s "
                "ORDER BY create_timestamp DESC LIMIT 1", {"job": job, "day": f'%"crm/nightly": "{day}"%'}).first()
    finally:
        engine.dispose()
    return row[0] if row else None


def test_golden_follows_a_group_of_loads_once_after_the_last_of_them(tmp_path, landing):
    defs = build_defs(settings_for(tmp_path, landing))
    sensor = defs.resolve_sensor_def("nightly_chain_golden")
    job = defs.resolve_job_def("ingest_sources")

    def load(first: str, last: str, tags: dict):
        return job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last, **tags},
            asset_selection=[raw_asset_key("web_form_leads")], run_config=QUIET)

    def after(result):
        ctx = dg.build_run_status_sensor_context(sensor_name="nightly_chain_golden", dagster_instance=instance,
                                                 dagster_run=instance.get_run_by_id(result.run_id),
                                                 dagster_event=result.get_run_success_event())
        return sensor(ctx)

    with dg.instance_for_test() as instance:
        rebuild = {"crm/rebuild": "g1", "crm/rebuild_runs": "2", "crm/nightly": "rebuild-g1"}
        first = after(load("2026-11-02", "2026-11-03", rebuild))
        assert isinstance(first, dg.SkipReason) and "1 of 2 load(s) done" in first.skip_message
        second = after(load("2026-11-05", "2026-11-05", rebuild))
        assert isinstance(second, dg.RunRequest) and second.run_key == "golden-after:crm/rebuild:g1"
        assert second.tags["crm/nightly"] == "rebuild-g1"

        # A UI backfill: its runs are submitted together; golden waits while one is still to run.
        ran = load("2026-11-02", "2026-11-02", {"dagster/backfill": "bf1"})
        waiting = instance.create_run_for_job(job_def=job, run_config=QUIET,
                                              asset_selection=frozenset([raw_asset_key("web_form_leads")]), tags={
            "dagster/backfill": "bf1", "dagster/asset_partition_range_start": "2026-11-04",
            "dagster/asset_partition_range_end": "2026-11-04"})
        assert waiting.status == dg.DagsterRunStatus.NOT_STARTED
        assert isinstance(after(ran), dg.SkipReason)
        instance.report_run_failed(waiting)  # it failed: no golden until it is re-executed with success
        assert isinstance(after(ran), dg.SkipReason)
        again = load("2026-11-04", "2026-11-04", {"dagster/backfill": "bf1"})
        request = after(again)
        assert isinstance(request, dg.RunRequest) and request.tags["crm/nightly"] == "backfill-bf1"
