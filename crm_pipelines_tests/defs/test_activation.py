"""The activation group in Dagster against the local Brevo-compatible tool: the nightly pass (segments,
audience behind blocking checks, lists, journeys with charts), an unsubscribe webhook taking a contact off
every list through the consent and segment sensors, a segment jump held back until acknowledged."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timezone

import dagster as dg
import sqlalchemy as sa

from crm_pipelines.core.activation.membership import write_state
from crm_pipelines.core.activation.segments import load_segments
from crm_pipelines.core.activation.webhooks import land_events
from crm_pipelines.core.platform.schema import ACTIVATION_MEMBERS, GOLDEN_CONTACTS
from crm_pipelines.core.platform.warehouse import Warehouse
from crm_pipelines.definitions import build_defs
from crm_pipelines.devtools.brevo_server import BrevoServer
from crm_pipelines.devtools.crm_server import CrmServer
from crm_pipelines_tests.conftest import copy_config
from crm_pipelines_tests.defs.test_golden import checks_of, golden_world

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def materialised(result) -> dict[str, dict]:
    return {e.materialization.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


def test_activation_night_then_an_unsubscribe_by_webhook_within_the_sensors(tmp_path, demo_landing):
    config = copy_config(tmp_path)
    for path in (config / "segments").glob("*.yaml"):   # the demo's segments are small: any change counts
        path.write_text(path.read_text(encoding="utf-8") + "min_size_change: 1\n", encoding="utf-8")
    with golden_world(tmp_path, demo_landing) as (settings, _defs, instance), BrevoServer(import_delay=0.02) as brevo, \
            CrmServer() as crm:
        defs = build_defs(replace(settings, config_dir=config, marketing_url=brevo.url, crm_url=crm.url))
        assert defs.resolve_job_def("score_leads").execute_in_process(instance=instance).success
        night = defs.resolve_job_def("activation_nightly").execute_in_process(instance=instance)
        assert night.success and all(checks_of(night).values()), checks_of(night)
        mats = materialised(night)
        assert {"activation/segment_membership", "activation/audience", "activation/brevo_lists",
                "activation/journeys", "activation/crm_lists"} <= set(mats)
        assert mats["activation/segment_membership"]["dagster/row_count"] > 0
        assert "data:image/png;base64," in mats["activation/segment_membership"]["chart_sizes"]
        assert any(k.startswith("funnel_") and "data:image/png;base64," in v for k, v in mats["activation/journeys"].items())
        # Metadata names nobody.
        blob = "\n".join(str(v) for m in mats.values() for k, v in m.items() if not k.startswith(("chart", "funnel")))
        assert EMAIL.findall(blob) == []

        wh = Warehouse.for_url(settings.default_warehouse_url)
        consent = dict(wh.read_select(sa.select(GOLDEN_CONTACTS.c.email, GOLDEN_CONTACTS.c.email_consent)).values)
        in_tool = {c.email for c in brevo.contacts.values()}
        assert in_tool and all(consent.get(e) == "granted" for e in in_tool)   # only consented contacts reached it
        assert brevo.stats().get("resubscribed", 0) == 0

        # A list that jumps beyond its segment's bound since the last activation is held back until acknowledged.
        sizes = mats["activation/audience"]["lists"]
        jumping = max(sizes, key=sizes.get)
        assert sizes[jumping] >= 2
        segment = next(s.name for s in load_segments(settings.config_dir / "segments").values()
                       if s.destinations.get("brevo") == jumping)
        write_state(wh, "activation.sizes", json.dumps({**sizes, jumping: 0}))
        calls = brevo.stats()["contacts"], brevo.stats().get("list_adds", 0)
        held = defs.resolve_job_def("activation_nightly").execute_in_process(instance=instance, raise_on_error=False)
        evaluation = next(c for c in held.get_asset_check_evaluations() if c.check_name == "segment_size_within_bound")
        assert evaluation.passed is False and list(evaluation.metadata["jumps"].value) == [segment]
        assert "activation/brevo_lists" not in materialised(held)
        assert (brevo.stats()["contacts"], brevo.stats().get("list_adds", 0)) == calls   # nothing was sent
        acknowledged = defs.resolve_job_def("activation_nightly").execute_in_process(
            instance=instance, run_config={"ops": {"activation__audience": {"config": {"acknowledged_segments": [segment]}}}})
        assert acknowledged.success and "activation/brevo_lists" in materialised(acknowledged)

        # One of them, a contact the CRM has, unsubscribes; the tool's webhook lands in the landing zone.
        m, g = ACTIVATION_MEMBERS, GOLDEN_CONTACTS
        member, crm_id = wh.read_select(
            sa.select(m.c.golden_id, g.c.crm_contact_id).join(g, g.c.golden_id == m.c.golden_id)
            .where(m.c.list_name != "crm_pipelines: aktivierte Kontakte", g.c.crm_contact_id.is_not(None))
            .order_by(m.c.golden_id).limit(1)).iloc[0]
        address = wh.scalar(sa.select(GOLDEN_CONTACTS.c.email).where(GOLDEN_CONTACTS.c.golden_id == member))
        crm.seed_from_landing(settings.landing_dir)
        assert defs.resolve_job_def("setup_crm_portal").execute_in_process(instance=instance).success
        in_crm = {o["id"]: o["properties"] for o in crm.objects("contacts")}
        assert in_crm[crm_id].get("crm_email_consent") != "withdrawn"
        live_before = crm.count("contacts")["objects"]
        now = datetime.now(timezone.utc)
        land_events(settings.landing_dir, {"event": "unsubscribed", "email": address, "id": 1,
                                           "ts_event": int(now.timestamp()), "tag": "welcome#1"}, now)
        consent_sensor = defs.resolve_sensor_def("engagement_changes")
        tick = consent_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources))
        # Only today's webhook file: the demo's engagement days in the landing zone are the nightly load's.
        assert [r.tags["crm/landing_file"].split("/")[1] for r in tick.run_requests] == [f"{now:%Y-%m-%d}"]
        applied = defs.resolve_job_def("apply_consent_changes").execute_in_process(
            instance=instance, run_config=tick.run_requests[0].run_config)
        assert applied.success
        assert wh.scalar(sa.select(GOLDEN_CONTACTS.c.email_consent).where(GOLDEN_CONTACTS.c.golden_id == member)) == "withdrawn"
        # The same run pushed the withdrawal to the CRM: that one contact, no create, nothing archived.
        in_crm = {o["id"]: o["properties"] for o in crm.objects("contacts")}
        assert in_crm[crm_id]["crm_email_consent"] == "withdrawn"
        push_md = {k: v.value for e in applied.all_events if e.step_key == "push_consent_to_crm" and e.is_successful_output
                   for k, v in e.event_specific_data.metadata.items()}
        assert (push_md["contacts"], push_md["updated"], push_md["created"], push_md["archived"]) == (1, 1, 0, 0)
        assert crm.count("contacts")["objects"] == live_before

        sensor = defs.resolve_sensor_def("segment_updates")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert len(tick.run_requests) == 1
        realtime = defs.resolve_job_def("activation_realtime").execute_in_process(instance=instance)
        assert realtime.success
        rt = materialised(realtime)["activation/segment_membership"]
        assert rt["mode"] == "incremental" and 1 <= rt["contacts_evaluated"] < 20
        lists_of = {c.email: c.list_ids for c in brevo.contacts.values()}
        ours = {int(i) for i, v in brevo.lists.items() if v["created_by_api"]}
        assert not (lists_of.get(address, set()) & ours)
        assert wh.read_select(sa.select(m).where(m.c.golden_id == member)).empty
        # Nothing new: the sensor skips.
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=defs.resources,
                                                             cursor=tick.cursor))
        assert again.run_requests == []


def test_history_charts_with_segments_on_different_days(monkeypatch):
    """Segments whose entries fall on different days: every segment's line covers every day."""
    import pandas as pd

    import crm_pipelines.defs.activation as module
    hist = pd.DataFrame({"segment": pd.Series(["a", "b"], dtype="str"), "day": ["2026-12-01", "2026-12-02"],
                         "entered": [3, 2], "left": [0, 1]})
    monkeypatch.setattr(module, "segment_history", lambda wh: hist)
    monkeypatch.setattr(module, "tables_present", lambda wh, tables: True)
    charts = module._history_charts(None)
    assert set(charts) == {"chart_sizes", "chart_entries_exits"}
    assert all("data:image/png;base64," in v.value for v in charts.values())
