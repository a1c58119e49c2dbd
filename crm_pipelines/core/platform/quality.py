"""Quality gates: the Great Expectations suites that guard the golden tables and the CRM payloads.

All suites are defined here, in one place, as plain lists of GX Core 1.x expectations with a
sentence each; ``docs/quality.md`` is generated from them (``make sql``). They run on an
ephemeral GX context (no project folder, no network: ``GX_ANALYTICS_ENABLED=false``) and
return counts only: unexpected *values* of personal columns never leave this module unmasked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import pandas as pd

from .masking import mask_email


def _gx():
    """Great Expectations, imported when a suite is built: it takes seconds to import, and the
    near-real-time lead runs, which never validate, should not pay for it."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    return gx, gxe, Column


EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
PLZ_REGEX = r"^\d{5}$"
# Columns whose unexpected values may be shown in metadata (not personal); e-mails are masked; others hidden.
SHOWABLE = {"zip", "postal_code", "country", "lifecyclestage"}
MASKED = {"email": mask_email}


@dataclass(frozen=True)
class Rule:
    description: str
    expectation: object  # a great_expectations.expectations.Expectation


@dataclass(frozen=True)
class Suite:
    name: str
    target: str
    rules: tuple[Rule, ...]


def _de_plz(column: str, country: str) -> Rule:
    _, gxe, Column = _gx()
    return Rule(f"`{column}` is a five-digit PLZ where `{country}` is DE (leading zeros kept: 01067)",
                gxe.ExpectColumnValuesToMatchRegex(column=column, regex=PLZ_REGEX, row_condition=Column(country) == "DE"))


def _key(column: str) -> tuple[Rule, Rule]:
    gxe = _gx()[1]
    return (Rule(f"`{column}` is never empty", gxe.ExpectColumnValuesToNotBeNull(column=column)),
            Rule(f"`{column}` is unique", gxe.ExpectColumnValuesToBeUnique(column=column)))


def golden_contacts_suite() -> Suite:
    gxe = _gx()[1]
    return Suite("golden_contacts", "golden/contacts", (
        *_key("golden_id"),
        Rule("`email` is a syntactically valid address where present",
             gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL_REGEX)),
        Rule("no two golden contacts share an e-mail", gxe.ExpectColumnValuesToBeUnique(column="email")),
        _de_plz("postal_code", "country"),
    ))


def golden_accounts_suite() -> Suite:
    gxe = _gx()[1]
    return Suite("golden_accounts", "golden/accounts", (
        *_key("golden_id"),
        Rule("`company_name` is never empty", gxe.ExpectColumnValuesToNotBeNull(column="company_name")),
        _de_plz("postal_code", "country"),
    ))


def payload_suite(object_type: str, required: Sequence[str] = (), lifecycle_stages: Sequence[str] = ()) -> Suite:
    """The outgoing payload: what the CRM would receive (assets ``crm_account_payload``, ``crm_contact_payload``)."""
    gxe = _gx()[1]
    rules: list[Rule] = [*_key("golden_id")]
    rules += [Rule(f"required property `{p}` is never empty (sync.yaml)", gxe.ExpectColumnValuesToNotBeNull(column=p))
              for p in required]
    rules.append(_de_plz("zip", "country"))
    if object_type == "contacts":
        rules += [
            Rule("`email` is a syntactically valid address where present",
                 gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL_REGEX)),
            Rule("`email` is unique (the CRM keys contacts by it)", gxe.ExpectColumnValuesToBeUnique(column="email")),
            Rule("`lifecyclestage` is one of the CRM's stages (sync.yaml lifecycle_stages)",
                 gxe.ExpectColumnValuesToBeInSet(column="lifecyclestage", value_set=list(lifecycle_stages))),
            Rule("no suppressed person (erased) is in the payload: no row's e-mail, CRM contact ID or family name + "
                 "address is on ops.suppression_list (`_suppressed`, computed from the payload itself)",
                 gxe.ExpectColumnValuesToBeInSet(column="_suppressed", value_set=[False])),
        ]
    else:
        rules.append(Rule("`name` is never empty", gxe.ExpectColumnValuesToNotBeNull(column="name")))
    target = "crm_contact_payload" if object_type == "contacts" else "crm_account_payload"
    return Suite(f"crm_{object_type}_payload", target, tuple(rules))


@dataclass
class RuleResult:
    rule: str
    expectation: str
    column: str | None
    success: bool
    element_count: int
    unexpected_count: int
    unexpected_percent: float
    examples: list = field(default_factory=list)


@dataclass
class SuiteResult:
    suite: str
    success: bool
    rows: int
    results: list[RuleResult]

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.results if not r.success]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([{"expectation": r.expectation, "column": r.column, "passed": r.success,
                              "unexpected": r.unexpected_count, "unexpected %": round(r.unexpected_percent, 3),
                              "examples": ", ".join(map(str, r.examples))} for r in self.results])


def validate(df: pd.DataFrame, suite: Suite) -> SuiteResult:
    """Runs a suite on a DataFrame with an ephemeral GX context."""
    gx, gxe, _ = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = context.data_sources.add_pandas("frames").add_dataframe_asset(suite.name) \
        .add_batch_definition_whole_dataframe("whole")
    gx_suite = gx.ExpectationSuite(name=suite.name)
    missing = []
    for rule in suite.rules:
        column = getattr(rule.expectation, "column", None)
        if column is not None and column not in df.columns:
            missing.append(rule)
            continue
        gx_suite.add_expectation(rule.expectation.copy(deep=True))
    gx_suite = context.suites.add(gx_suite)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    res = batch.validate(gx_suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    by_config = {}
    for r in res.results:
        cfg = r.expectation_config
        by_config[(cfg.type, cfg.kwargs.get("column"), str(cfg.kwargs.get("regex") or cfg.kwargs.get("row_condition")))] = r
    results = []
    for rule in suite.rules:
        column = getattr(rule.expectation, "column", None)
        if rule in missing:
            results.append(RuleResult(rule.description, rule.expectation.expectation_type, column, False, len(df), len(df),
                                      100.0, ["column missing"]))
            continue
        key = (rule.expectation.expectation_type, column,
               str(getattr(rule.expectation, "regex", None) or getattr(rule.expectation, "row_condition", None)))
        r = by_config[key]
        result = r.result or {}
        results.append(RuleResult(rule.description, key[0], column, bool(r.success), int(result.get("element_count") or 0),
                                  int(result.get("unexpected_count") or 0), float(result.get("unexpected_percent") or 0.0),
                                  _examples(column, result.get("partial_unexpected_list") or [])))
    return SuiteResult(suite.name, all(r.success for r in results), len(df), results)


def _examples(column: str | None, values: list) -> list:
    if column in SHOWABLE:
        return [v for v in values if v is not None][:5]
    if column in MASKED:
        return [MASKED[column](v) for v in values if isinstance(v, str)][:5]
    return []


def all_suites() -> list[Suite]:
    """Every suite with its default parameters, for the documentation."""
    stages = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
              "evangelist", "other")
    return [golden_contacts_suite(), golden_accounts_suite(), payload_suite("companies", ("name",)),
            payload_suite("contacts", (), stages)]


def suites_markdown(suites: Callable[[], list[Suite]] = all_suites) -> str:
    lines = ["# Quality gates", "",
             "Generated by `make sql` from `crm_pipelines/core/platform/quality.py`; do not edit.", "",
             "Every suite runs as a **blocking** Dagster asset check on its target: when one fails, the",
             "assets downstream (the CRM pushes) do not run in that run, and the push assets refuse to run in",
             "a later run until the check has passed on the current materialisation. Results appear as check",
             "metadata: each expectation with its unexpected count and percentage (values of personal columns",
             "are never shown; e-mails only masked).", ""]
    for suite in suites():
        lines += [f"## `{suite.name}` (on `{suite.target}`)", "", "| expectation | rule |", "|---|---|"]
        for rule in suite.rules:
            lines.append(f"| `{rule.expectation.expectation_type}` | {rule.description} |")
        lines.append("")
    return "\n".join(lines)
