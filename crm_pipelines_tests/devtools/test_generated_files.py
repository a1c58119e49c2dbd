"""Files derived from the model must match it: sql/ DDL and docs/data-model.md."""

from __future__ import annotations

from pathlib import Path

from crm_pipelines.core.model import ENTITIES
from crm_pipelines.devtools.ddl import render
from crm_pipelines.devtools.docgen import render as render_docs
from crm_pipelines.settings import DEFAULT_CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_sql_folder_is_up_to_date():
    for name, text in render(DEFAULT_CONFIG_DIR).items():
        assert (ROOT / "sql" / name).read_text(encoding="utf-8") == text, f"sql/{name} is stale: run `make sql`"


def test_data_model_doc_is_up_to_date_and_lists_every_field():
    doc = (ROOT / "docs" / "data-model.md").read_text(encoding="utf-8")
    assert doc == render_docs(DEFAULT_CONFIG_DIR), "docs/data-model.md is stale: run `make sql`"
    for entity in ENTITIES.values():
        assert f"## `{entity.name}`" in doc
        for field in entity.fields:
            assert f"| `{field.name}` | {field.type} |" in doc


def test_every_transform_is_documented_for_mapping_authors():
    from crm_pipelines.core.sources.transforms import TRANSFORMS

    doc = (ROOT / "docs" / "sources.md").read_text(encoding="utf-8")
    for name in TRANSFORMS:
        assert f"`{name}`" in doc, name


def test_quality_doc_lists_every_suite_as_generated():
    from crm_pipelines.core.platform.quality import all_suites, suites_markdown

    doc = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    assert doc == suites_markdown(), "docs/quality.md is stale: run `make sql`"
    for suite in all_suites():
        assert f"## `{suite.name}`" in doc


def test_privacy_doc_lists_the_inventory_as_generated():
    from crm_pipelines.core.privacy.inventory import build_inventory, render_privacy_doc
    from crm_pipelines.core.sources.mapping import load_mappings

    doc = (ROOT / "docs" / "privacy.md").read_text(encoding="utf-8")
    mappings = load_mappings(DEFAULT_CONFIG_DIR)
    assert doc == render_privacy_doc(doc, mappings), "docs/privacy.md is stale: run `make sql`"
    for loc in build_inventory(mappings):
        assert f"`{loc.name}`" in doc

