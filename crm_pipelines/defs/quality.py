"""Great Expectations suites (core/platform/quality.py) as blocking Dagster asset checks on the golden tables.

The payload suites run inside the payload assets (defs/crm.py), as check results of those assets.
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from ..core.platform import quality as Q
from ..core.platform.schema import GOLDEN_ACCOUNTS, GOLDEN_CONTACTS
from .golden import ACCOUNTS_KEY, CONTACTS_KEY
from .metadata import frame_markdown
from .resources import WarehouseResource


def check_result(result: Q.SuiteResult, **extra) -> dict:
    """Check metadata: every expectation with unexpected count and percent; masked examples only."""
    failed = result.failed
    passed = len(result.results) - len(failed)
    return {
        "suite": result.suite, "rows": result.rows, "expectations": len(result.results),
        "failed_expectations": len(failed),
        # Numeric, under the same name on every suite: the UI plots it over the runs.
        "success_percent": round(100.0 * passed / len(result.results), 2) if result.results else 100.0,
        "results": dg.MetadataValue.md(frame_markdown(result.table())),
        **{f"unexpected_{r.column or 'table'}_{r.expectation.removeprefix('expect_')}": r.unexpected_count
           for r in failed},
        **extra,
    }


def build_quality_defs() -> dg.Definitions:
    @dg.asset_check(asset=CONTACTS_KEY, name="gx_golden_contacts", blocking=True,
                    description="GX suite `golden_contacts`: golden IDs present and unique, e-mails valid and unique, "
                                "PLZ five digits for DE (docs/quality.md). Blocks the CRM push when it fails.")
    def gx_golden_contacts(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        df = warehouse.get().read_frame(sa.select(GOLDEN_CONTACTS.c.golden_id, GOLDEN_CONTACTS.c.email,
                                                  GOLDEN_CONTACTS.c.postal_code, GOLDEN_CONTACTS.c.country))
        result = Q.validate(df, Q.golden_contacts_suite())
        return dg.AssetCheckResult(passed=result.success, metadata=check_result(result))

    @dg.asset_check(asset=ACCOUNTS_KEY, name="gx_golden_accounts", blocking=True,
                    description="GX suite `golden_accounts`: golden IDs present and unique, company names present, PLZ "
                                "five digits for DE (docs/quality.md). Blocks the CRM push when it fails.")
    def gx_golden_accounts(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        df = warehouse.get().read_frame(sa.select(GOLDEN_ACCOUNTS.c.golden_id, GOLDEN_ACCOUNTS.c.company_name,
                                                  GOLDEN_ACCOUNTS.c.postal_code, GOLDEN_ACCOUNTS.c.country))
        result = Q.validate(df, Q.golden_accounts_suite())
        return dg.AssetCheckResult(passed=result.success, metadata=check_result(result))

    return dg.Definitions(asset_checks=[gx_golden_contacts, gx_golden_accounts])
