"""Golden-layer assets (group ``golden``): cleaned records, register enrichment, golden accounts and
contacts with stable IDs, the crosswalk and the steward review queue. Thin: the work is in core.golden."""

import inspect
import json
from datetime import timedelta

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from ..core.golden.build import ContactMatches, GoldenResult, match_contacts, resolve_accounts, write_contacts
from ..core.golden.crosswalk import build_crosswalk, link_contacts_to_accounts
from ..core.golden.enrichment import enrich
from ..core.golden.explain import explain
from ..core.golden.matching.settings import MatchingConfig, load_matching_config
from ..core.golden.review import build_review_queue
from ..core.golden.staging import (ENRICHMENT_COLUMNS, SLICE_RECORDS, build_account_records,
                                   drop_unmapped_person_sources, load_account_records, load_person_records_sample)
from ..core.golden.staging import clean_person_source as clean_source
from ..core.model import ENTITIES
from ..core.platform.masking import mask_value, masked_preview
from ..core.platform.schema import ACCOUNT_CROSSWALK, ACCOUNT_RECORDS, GOLDEN_CONTACTS, PERSON_CROSSWALK, PERSON_RECORDS
from ..core.sources.roles import ACCOUNT_SOURCES, PERSON_SOURCES
from .auditing import audit_run
from .metadata import frame_markdown, markdown_table
from .resources import PrivacyResource, RegisterResource, WarehouseResource
from .sources import raw_asset_key

GROUP = "golden"
OWNERS = ["team:data-engineering"]
# Bumped when the golden code changes what it produces; the matching settings' hash is added.
CODE_VERSION = "golden-1"

PERSON_KEY = dg.AssetKey(["staging", "person_records"])
ACCOUNT_KEY = dg.AssetKey(["staging", "account_records"])
REGISTER_KEY = dg.AssetKey(["staging", "register_enrichment"])
ACCOUNTS_KEY = dg.AssetKey(["golden", "accounts"])
CONTACTS_KEY = dg.AssetKey(["golden", "contacts"])
MATCHES_KEY = dg.AssetKey(["golden", "contact_matches"])
CROSSWALK_KEY = dg.AssetKey(["golden", "crosswalk"])
REVIEW_KEY = dg.AssetKey(["golden", "review_queue"])
CONSENT_KEY = dg.AssetKey(["staging", "consent_events"])  # built by the privacy group


def build_golden_defs(config_dir, slice_records: int = SLICE_RECORDS) -> dg.Definitions:
    cfg_path = config_dir / "matching.yaml"
    cfg: MatchingConfig = load_matching_config(cfg_path)
    version = f"{CODE_VERSION}-{cfg.sha256[:12]}"

    person_records = _person_records_asset(slice_records)

    @dg.asset(key=ACCOUNT_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=CODE_VERSION,
              deps=[PERSON_KEY, *[raw_asset_key(s) for s in ACCOUNT_SOURCES]],
              description="Cleaned account records: ERP customers, CRM companies and every company mention of a person "
                          "record (so a lead's company can join an existing account). Legal form apart from the base name. "
                          "Table `staging.account_records`.")
    def account_records(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        written = build_account_records(wh, slice_records)
        forms = sorted(written.values.get("legal_form", {}).items(), key=lambda kv: (-kv[1], str(kv[0])))[:12]
        preview = written.preview if written.preview is not None else pd.DataFrame()
        return dg.MaterializeResult(metadata={
            "dagster/row_count": written.records,
            "mentions": written.counts.get("mentions", 0),
            "slices": written.slices,
            "legal_forms": dg.MetadataValue.md(markdown_table(["legal form", "records"], forms)),
            "preview": dg.MetadataValue.md(frame_markdown(preview)),
        })

    @dg.asset(key=REGISTER_KEY, group_name=GROUP, owners=OWNERS, kinds={"python", "sql"}, code_version=CODE_VERSION,
              deps=[ACCOUNT_KEY],
              description="Looks up legal form, register court and number of accounts in the company register "
                          "(CRM_REGISTER_URL), within the hourly rate limit; answers are cached in `ops.register_cache`. "
                          "When the register is down the run succeeds and says how many were not enriched.")
    def register_enrichment(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                            register: RegisterResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        accounts = load_account_records(wh, ENRICHMENT_COLUMNS)
        client = register.client()
        if client is None:
            context.log.info("CRM_REGISTER_URL is not set: no register lookups")
        report = enrich(wh, accounts, client, register.calls_per_hour, log=context.log.warning)
        return dg.MaterializeResult(metadata={
            "configured": client is not None, "candidates": report.candidates, "already_cached": report.cached,
            "queried": report.queried, "found": report.found, "not_found": report.not_found,
            "deferred_by_rate_limit": report.deferred, "not_enriched_register_down": report.not_enriched_outage,
            "outage": report.outage or "",
        })

    account_checks = [
        dg.AssetCheckSpec("every_record_one_golden_id", asset=ACCOUNTS_KEY, blocking=True,
                          description="Every account record has exactly one current golden account ID."),
        dg.AssetCheckSpec("match_rate_stable", asset=ACCOUNTS_KEY, blocking=True,
                          description=f"The share of merged records moved by at most {cfg.max_match_rate_change:.0%} "
                                      "since the last accepted run over a comparable record base (a jump is the "
                                      "symptom of a broken mapping; runs over no records never set the reference, "
                                      f"and a base grown by more than {cfg.max_record_growth:.0%} resets it)."),
    ]

    @dg.asset(key=ACCOUNTS_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
              deps=[ACCOUNT_KEY, REGISTER_KEY], check_specs=account_checks,
              description="Golden accounts: account records resolved into companies (blocking, Fellegi-Sunter weights "
                          "estimated from the data, clustering without chaining, steward decisions honoured), one golden "
                          "record each by survivorship rules, IDs stable across runs. Tables `golden.accounts`, "
                          "`golden.account_crosswalk` (with history), `golden.account_lineage`, `golden.match_edges`.")
    def golden_accounts(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        wh = warehouse.get()
        result = resolve_accounts(wh, cfg, context.run.run_id, log=context.log.info)
        metadata, checks = _golden_report(context, wh, result, cfg, ACCOUNTS_KEY, ACCOUNT_RECORDS, ACCOUNT_CROSSWALK)
        yield dg.MaterializeResult(metadata=metadata)
        yield from checks

    @dg.asset(key=MATCHES_KEY, group_name=GROUP, owners=OWNERS, kinds={"python", "numpy"}, code_version=version,
              deps=[PERSON_KEY],
              description="Person records resolved into people: blocking, comparisons, Fellegi-Sunter weights "
                          "estimated from the data, clustering without chaining, steward decisions honoured. The "
                          "matching of `golden/contacts`, a step of its own because it needs only the person records: "
                          "it and the write of `golden/contacts` run beside the account records and golden accounts. "
                          "No table: handed to `golden/contacts` through Dagster's IO manager (`$DAGSTER_HOME/storage`), "
                          "which writes it.")
    def contact_matches(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.Output[ContactMatches]:
        matches = match_contacts(warehouse.get(), cfg, log=context.log.info)
        res = matches.resolution
        return dg.Output(matches, metadata={
            "dagster/row_count": res.n_records, "clusters": res.n_clusters, "match_rate": round(res.match_rate, 6),
            "candidate_pairs": int(res.stats.get("candidate_pairs", 0)), "review_pairs": len(res.review),
            "merge_edges": len(res.clusters.merge_edges), "decisions_applied": matches.decisions_applied,
            "seconds": round(matches.seconds, 1),
        })

    contact_checks = [
        dg.AssetCheckSpec("unique_email", asset=CONTACTS_KEY, blocking=True,
                          description="No two golden contacts share a normalised e-mail address."),
        dg.AssetCheckSpec("every_record_one_golden_id", asset=CONTACTS_KEY, blocking=True,
                          description="Every person record has exactly one current golden contact ID."),
        dg.AssetCheckSpec("match_rate_stable", asset=CONTACTS_KEY, blocking=True,
                          description=f"The share of merged records moved by at most {cfg.max_match_rate_change:.0%} "
                                      "since the last accepted run over a comparable record base (a jump is the "
                                      "symptom of a broken mapping; runs over no records never set the reference, "
                                      f"and a base grown by more than {cfg.max_record_growth:.0%} resets it)."),
    ]

    golden_contacts = _golden_contacts_asset(cfg, version, contact_checks)

    @dg.asset(key=CROSSWALK_KEY, group_name=GROUP, owners=OWNERS, kinds={"sql"}, code_version=CODE_VERSION,
              deps=[CONTACTS_KEY, ACCOUNTS_KEY],
              description="Every source record with its current golden contact and golden account: what downstream "
                          "(privacy, CRM sync, print) joins on. Table `golden.crosswalk`; history in the per-entity "
                          "crosswalk tables.")
    def crosswalk(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        counts = build_crosswalk(wh)
        history = {t.name: int(wh.scalar(sa.select(sa.func.count()).select_from(t).where(t.c.valid_to.is_not(None))) or 0)
                   for t in (PERSON_CROSSWALK, ACCOUNT_CROSSWALK)}
        return dg.MaterializeResult(metadata={
            "dagster/row_count": counts["rows"], "person_records": counts["person_records"],
            "account_records": counts["account_records"],
            "person_records_with_account": counts["person_records_with_account"],
            "closed_history_rows": dg.MetadataValue.json(history),
        })

    @dg.asset(key=REVIEW_KEY, group_name=GROUP, owners=OWNERS, kinds={"sql"}, code_version=CODE_VERSION,
              deps=[CONTACTS_KEY, ACCOUNTS_KEY],
              description="Pairs a data steward should decide: review-band matches and merges the engine refused, with "
                          "per-field evidence. Decisions go to `golden.steward_decisions` (or `python -m "
                          "crm_pipelines.matching decide ...`) and are honoured on the next run. Table `golden.review_queue`.")
    def review_queue(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        wh = warehouse.get()
        queue = build_review_queue(wh)
        sample = queue.head(5)
        rows = [(r.entity, r.golden_a, r.golden_b, f"{r.probability:.3f}", r.reason,
                 ", ".join(f"{k}: {v[0]}" for k, v in json.loads(r.evidence).items())) for r in sample.itertuples()]
        return dg.MaterializeResult(metadata={
            "dagster/row_count": len(queue),
            "by_entity": dg.MetadataValue.json(queue["entity"].value_counts().to_dict() if len(queue) else {}),
            "top_pairs": dg.MetadataValue.md(markdown_table(["entity", "golden a", "golden b", "p", "reason", "evidence"], rows)),
        })

    build_golden = dg.define_asset_job(
        "build_golden",
        selection=dg.AssetSelection.groups(GROUP) | dg.AssetSelection.assets(CONSENT_KEY),
        description="Clean, enrich and resolve everything loaded into golden contacts and accounts (with the "
                    "consent ledger, whose verdict per channel is a field of the golden contact).")
    return dg.Definitions(assets=[person_records, account_records, register_enrichment, golden_accounts, contact_matches,
                                  golden_contacts, crosswalk, review_queue], jobs=[build_golden])


def _golden_report(context, wh, result: GoldenResult, cfg: MatchingConfig, key: dg.AssetKey, records_table,
                   xw_table) -> tuple[dict, list[dg.AssetCheckResult]]:
    """A golden step's metadata and the results of its checks every_record_one_golden_id and match_rate_stable."""
    stats = result.stats
    audit_run(wh, context, f"golden.{result.entity}.resolved", {
        "golden": result.n_golden, "id_events": result.id_events, "crosswalk_changes": stats.get("crosswalk_changes", 0)})
    n_records = int(wh.scalar(sa.select(sa.func.count()).select_from(records_table)) or 0)
    missing = int(wh.scalar(sa.select(sa.func.count()).select_from(records_table).where(
        ~sa.exists().where(xw_table.c.record_key == records_table.c.record_key, xw_table.c.valid_to.is_(None)))) or 0)
    doubled = wh.read_frame(sa.select(xw_table.c.record_key).where(xw_table.c.valid_to.is_(None))
                            .group_by(xw_table.c.record_key).having(sa.func.count() > 1))
    rate = float(stats["match_rate"])
    previous = stats.get("previous_match_rate")
    jump = abs(rate - previous) if previous is not None else 0.0
    events = result.id_events
    multi = result.examples["golden_id"].head(3).tolist()
    explanations = {}
    for gid in multi:
        ex = explain(wh, result.entity, gid)
        explanations[gid] = [{"a": m["record_a"], "b": m["record_b"], "p": m["probability"], "reason": m["reason"],
                              "evidence": {k: v[0] for k, v in m["evidence"].items()}} for m in ex["merges"][:5]]
    weights = result.weights
    metadata = {
            "dagster/row_count": result.n_golden, "source_records": n_records, "match_rate": round(rate, 6),
            "previous_match_rate": previous if previous is not None else -1.0,
            "candidate_pairs": stats["candidate_pairs"], "possible_pairs": stats["possible_pairs"],
            "review_pairs": stats["review_pairs"], "merges_vetoed_by_contradiction": stats.get("vetoed", 0),
            "steward_decisions_applied": stats.get("decisions_applied", 0),
            "id_events": dg.MetadataValue.json(events), "crosswalk_changes": stats.get("crosswalk_changes", 0),
            "seconds": stats.get("seconds", 0.0),
            "blocking_rules": dg.MetadataValue.md(markdown_table(["rule", "pairs", "skipped blocks"], [
                (b["rule"], b["pairs"], b["skipped_blocks"]) for b in stats["blocking"]])),
            "model_weights": dg.MetadataValue.md(markdown_table(["comparison", "level", "m", "u", "weight"], [
                (w["comparison"], w["level"], w["m"], w["u"], w["weight"]) for w in weights])),
            "explanations_masked": dg.MetadataValue.json(explanations),
    }
    checks = [dg.AssetCheckResult(asset_key=key, check_name="every_record_one_golden_id",
                                  passed=missing == 0 and doubled.empty,
                                  metadata={"records": n_records, "without_id": missing, "with_several_ids": len(doubled)})]
    reference = ("record base grew by more than {:.0%} since the reference run: this rate is the new reference"
                 .format(cfg.max_record_growth) if stats.get("record_base_grew") else
                 "first run with records: this rate is the reference" if previous is None and n_records else
                 "no records yet: no reference" if not n_records else "compared with the last accepted run")
    checks.append(dg.AssetCheckResult(
        asset_key=key, check_name="match_rate_stable", passed=jump <= cfg.max_match_rate_change,
        metadata={"match_rate": round(rate, 6), "previous": previous if previous is not None else -1.0,
                  "change": round(jump, 6), "allowed": cfg.max_match_rate_change,
                  "reference_records": int(stats.get("reference_records") or 0), "reference": reference}))
    return metadata, checks


# ---------------------------------------------------------------------------- golden contacts, written then linked

def _golden_contacts_asset(cfg: MatchingConfig, version: str, checks: list[dg.AssetCheckSpec]) -> dg.AssetsDefinition:
    """``golden/contacts`` as a graph of two steps: the write of the matched people needs only golden/contact_matches
    and the consent ledger, so it runs beside the account records and golden/accounts; the link to the golden
    accounts follows both, and reports the asset and its checks."""

    @dg.op(name="write_golden_contacts", ins={"matches": dg.In(), "person_records": dg.In(dg.Nothing),
                                              "consent_events": dg.In(dg.Nothing)},
           description="Writes the golden contacts of golden/contact_matches (survivorship, stable IDs, consent per "
                       "channel, lineage, crosswalk, match edges), each with the account it was linked to before.")
    def write_golden_contacts(context: dg.OpExecutionContext, matches: ContactMatches,
                              warehouse: WarehouseResource) -> GoldenResult:
        result = write_contacts(warehouse.get(), cfg, matches, context.run.run_id, log=context.log.info)
        return result.without_resolution()  # handed on through the IO manager: the report, not the arrays

    outs = {"result": dg.Out(dg.Nothing), **{spec.get_python_identifier(): dg.Out(dg.Nothing) for spec in checks}}

    @dg.op(name="link_contacts_to_accounts", ins={"written": dg.In(), "golden_accounts": dg.In(dg.Nothing)}, out=outs,
           description="Links each golden contact to the golden account most of its records' company mentions went "
                       "to (only changed links are updated), then reports golden/contacts and runs its checks.")
    def link_accounts(context: dg.OpExecutionContext, written: GoldenResult, warehouse: WarehouseResource):
        wh = warehouse.get()
        links = link_contacts_to_accounts(wh)
        written.stats.update(links)
        context.log.info(f"{links['linked_to_account']:,} of {links['contacts']:,} golden contacts linked to a golden "
                         f"account ({links['account_links_changed']:,} links changed)")
        metadata, results = _golden_report(context, wh, written, cfg, CONTACTS_KEY, PERSON_RECORDS, PERSON_CROSSWALK)
        metadata.update(linked_to_account=links["linked_to_account"], account_links_changed=links["account_links_changed"])
        dupes = wh.read_frame(sa.select(GOLDEN_CONTACTS.c.email, sa.func.count().label("n"))
                              .where(GOLDEN_CONTACTS.c.email.is_not(None)).group_by(GOLDEN_CONTACTS.c.email)
                              .having(sa.func.count() > 1))
        results.append(dg.AssetCheckResult(
            asset_key=CONTACTS_KEY, check_name="unique_email", passed=dupes.empty,
            metadata={"shared_emails": len(dupes), "examples_masked": [mask_value(e, "email") for e in dupes["email"][:5]]}))
        yield dg.Output(None, "result", metadata=metadata)
        yield from results

    def compose(matches, person_records, consent_events, golden_accounts):
        written = write_golden_contacts(matches, person_records=person_records, consent_events=consent_events)
        outputs = link_accounts(written, golden_accounts=golden_accounts)
        return {"result": outputs.result, **{spec.get_python_identifier(): getattr(outputs, spec.get_python_identifier())
                                             for spec in checks}}

    nothing = lambda key: dg.AssetIn(key=key, dagster_type=dg.Nothing)  # noqa: E731
    contacts = dg.graph_asset(
        compose, key=CONTACTS_KEY, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"}, code_version=version,
        ins={"matches": dg.AssetIn(key=MATCHES_KEY), "person_records": nothing(PERSON_KEY),  # reads the golden fields
             "consent_events": nothing(CONSENT_KEY), "golden_accounts": nothing(ACCOUNTS_KEY)},
        check_specs=checks,
        description="Golden contacts: the people of `golden/contact_matches` (same normalised e-mail is the same person "
                    "unless it is a shared mailbox; Müller/Mueller, typos and swapped names tolerated; namesakes kept "
                    "apart), one golden record each by survivorship rules, IDs stable across runs, each given its "
                    "consent per channel and linked to its golden account. Two steps: the write runs beside the golden "
                    "accounts, the account link after both. Tables `golden.contacts`, `golden.person_crosswalk` (with "
                    "history), `golden.contact_lineage`, `golden.match_edges`.")
    # Sales and marketing start their day with them: rebuilt overnight, by 07:00 Berlin time.
    fresh_by_seven = dg.FreshnessPolicy.cron(deadline_cron="0 7 * * *", lower_bound_delta=timedelta(hours=8),
                                             timezone="Europe/Berlin")
    return contacts.map_asset_specs(lambda spec: dg.apply_freshness_policy(spec, fresh_by_seven))


# ---------------------------------------------------------------------------- person records, one step per source

def _person_records_asset(slice_records: int) -> dg.AssetsDefinition:
    """``staging/person_records`` as a graph: one cleaning step per person source (the executor runs them
    in parallel, on Celery workers too), then one step that checks the table and reports."""
    inputs = {f"raw_{s}": dg.AssetIn(key=raw_asset_key(s), dagster_type=dg.Nothing) for s in PERSON_SOURCES}

    @dg.op(name="person_sources", ins={name: dg.In(dg.Nothing) for name in inputs}, out=dg.DynamicOut(str),
           description="One cleaning step per person source.")
    def person_sources(warehouse: WarehouseResource):
        drop_unmapped_person_sources(warehouse.get())
        for source in PERSON_SOURCES:
            yield dg.DynamicOutput(source, mapping_key=source)

    @dg.op(name="clean_person_source", description="Cleans one source's latest raw rows into person records and "
                                                   "replaces that source's rows in `staging.person_records`.")
    def clean_person_source(context: dg.OpExecutionContext, source: str, warehouse: WarehouseResource,
                            privacy: PrivacyResource) -> dict:
        wh = warehouse.get()
        written = clean_source(wh, source, privacy.suppression(wh).screen(), slice_records)
        context.log.info(f"{source}: {written.records:,} person records in {written.slices} slice(s)")
        return {"source": source, "records": written.records, "suppressed": written.suppressed,
                "slices": written.slices, **written.counts}

    @dg.op(name="person_records_report", out=dg.Out(dg.Nothing),
           description="Checks that the table holds exactly what the source steps wrote; reports counts and a masked "
                       "preview.")
    def person_records_report(context: dg.OpExecutionContext, per_source: list[dict],
                              warehouse: WarehouseResource) -> None:
        wh = warehouse.get()
        by_source = {r["source"]: r for r in per_source}
        stored = wh.read_frame(sa.select(PERSON_RECORDS.c.source, sa.func.count().label("n"))
                               .group_by(PERSON_RECORDS.c.source))
        stored = dict(zip(stored["source"], stored["n"].astype(int)))
        wrong = {s: (stored.get(s, 0), r["records"]) for s, r in by_source.items() if stored.get(s, 0) != r["records"]}
        stray = sorted(set(stored) - set(by_source))
        if wrong or stray:
            raise dg.Failure(f"staging.person_records does not hold what the cleaning steps wrote: per source "
                             f"(stored, written) {wrong}; sources nobody wrote: {stray}")
        sample = load_person_records_sample(wh, 5)
        preview = masked_preview(sample, ENTITIES["contact"], ["source", "salutation", "first_name", "last_name", "email",
                                                               "phone", "company_name", "postal_code"])
        total = lambda key: sum(int(r.get(key, 0)) for r in per_source)  # noqa: E731
        context.add_output_metadata({
            "dagster/row_count": total("records"),
            "records_by_source": dg.MetadataValue.md(markdown_table(
                ["source", "records"], [(s, by_source[s]["records"]) for s in sorted(by_source)])),
            "invalid_emails": total("invalid_emails"), "unparseable_phones": total("unparseable_phones"),
            "suppressed_left_out": total("suppressed"), "with_legal_form": total("with_legal_form"),
            "cleaning_steps": len(per_source), "slices": total("slices"),
            "preview_masked": dg.MetadataValue.md(frame_markdown(preview)),
        })

    def compose(**raw):
        return person_records_report(person_sources(**raw).map(clean_person_source).collect())

    # The graph takes one (data-less) input per raw person source: the lineage edges of the asset graph.
    compose.__signature__ = inspect.Signature([inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in inputs])
    return dg.graph_asset(
        compose, key=PERSON_KEY, ins=inputs, group_name=GROUP, owners=OWNERS, kinds={"pandas", "sql"},
        code_version=CODE_VERSION,
        description="Cleaned person records from every person source (latest delivery of each record): e-mail "
                    "normalised and checked, phones in E.164, names with Anrede and titles apart, Kölner Phonetik "
                    "keys, addresses split, company legal forms extracted. One cleaning step per source, run in "
                    "parallel by the executor. Table `staging.person_records`.")
