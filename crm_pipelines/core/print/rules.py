"""Campaign rules: one YAML per campaign (``config/campaigns/*.yaml``), validated on load with errors
that name the file and key, evaluated vectorised over the whole audience.

A condition is ``{field, <operator>: value}`` or a combination ``{all: [...]}``, ``{any: [...]}``,
``{not: {...}}``. Operators: ``equals``, ``not_equals``, ``in``, ``not_in``, ``at_least``,
``at_most``, ``is_null`` (true/false), ``contains``, ``matches`` (regular expression).

Content is an ordered list of branches: the first whose ``when`` holds chooses the image and
text for a recipient (if / else if); the last branch has no ``when`` (else). Texts may use the
tokens ``{salutation_line}``, ``{first_name}``, ``{last_name}``, ``{company_name}``, ``{city}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..platform.configfile import ConfigError, YamlDoc, check_keys, load_yaml, require_mapping

# The fields an audience condition may use (see audience.py for where each comes from).
FIELDS = {
    "golden_id", "salutation", "academic_title", "first_name", "last_name", "job_title", "company_name", "street",
    "house_number", "postal_code", "city", "country", "account_id", "industry", "employee_count", "is_customer",
    "plz_area", "leitregion", "leitbereich", "months_since_last_order", "orders_12m", "revenue_24m", "revenue_24m_rank",
    "score", "stage", "months_since_last_activity", "post_consent", "post_consent_basis",
}
OPERATORS = ("equals", "not_equals", "in", "not_in", "at_least", "at_most", "is_null", "contains", "matches")
TOKENS = ("salutation_line", "first_name", "last_name", "company_name", "city")
SOURCES = ("golden_contacts", "reactivation_segment", "print_queue")
DEDUPE = ("household", "account", "none")
# batch: one list per build, approved by a person after its proof. single: every queued job is its own one-recipient
# list, released as soon as it is built under a standing approval of the campaign's rules (the template).
DELIVERY = ("batch", "single")
DEFAULT_LIMITS = {"salutation_line": 60, "name_line": 50, "company_line": 50, "street_line": 50, "city_line": 40,
                  "country_line": 30, "text": 600}


@dataclass(frozen=True)
class Branch:
    variant: str
    image: str
    text: str
    when: dict | None


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    sha256: str
    description: str
    source: str
    audience: dict | None
    branches: tuple[Branch, ...]
    dedupe: str
    max_lengths: dict[str, int]
    image_root: str
    proof_samples: int
    delivery: str = "batch"
    holdout: float = 0.0        # share of the eligible recipients kept out, to measure the Rücklaufquote against


def load_campaign(path: str | Path) -> Campaign:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("name", "description", "source", "audience", "content", "dedupe", "template",
                               "proof_samples", "delivery", "holdout"), required=("name", "content"))
    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise doc.error("name", "must be lower-case letters, digits, '-' or '_' (it names files and assets)")
    source = data.get("source", "golden_contacts")
    if source not in SOURCES:
        raise doc.error("source", f"unknown source '{source}'; available: {', '.join(SOURCES)}")
    audience = data.get("audience")
    if audience is not None:
        _check_condition(doc, audience, "audience")
    content = data["content"]
    if not isinstance(content, list) or not content:
        raise doc.error("content", "must list at least one branch (the last one without `when`: the else branch)")
    branches = []
    for i, b in enumerate(content):
        key = f"content[{i}]"
        b = require_mapping(doc, b, key)
        check_keys(doc, b, key, ("when", "variant", "image", "text"), required=("variant", "image", "text"))
        last = i == len(content) - 1
        if "when" in b:
            _check_condition(doc, b["when"], f"{key}.when")
        elif not last:
            raise doc.error(f"{key}.when", "only the last branch may go without a condition (it is the else branch)")
        if last and "when" in b:
            raise doc.error(key, "the last branch must not have `when`: it is the else branch every recipient falls to")
        text = b["text"]
        if not isinstance(text, str) or not text.strip():
            raise doc.error(f"{key}.text", "must be a non-empty text")
        for token in re.findall(r"\{([^}]*)\}", text):
            if token not in TOKENS:
                raise doc.error(f"{key}.text", f"unknown token {{{token}}}; available: "
                                               + ", ".join("{" + t + "}" for t in TOKENS))
        if not isinstance(b["variant"], str) or not re.fullmatch(r"[A-Za-z0-9_-]+", b["variant"]):
            raise doc.error(f"{key}.variant", "must be a short name of letters, digits, '-' or '_'")
        branches.append(Branch(b["variant"], str(b["image"]), " ".join(text.split()), b.get("when")))
    if len({b.variant for b in branches}) != len(branches):
        raise doc.error("content", "every branch needs its own variant name")
    dedupe = data.get("dedupe", "household")
    if dedupe not in DEDUPE:
        raise doc.error("dedupe", f"must be one of: {', '.join(DEDUPE)}")
    template = require_mapping(doc, data.get("template") or {}, "template")
    check_keys(doc, template, "template", ("max_lengths", "image_root"))
    limits = dict(DEFAULT_LIMITS)
    for field_, n in require_mapping(doc, template.get("max_lengths") or {}, "template.max_lengths").items():
        if field_ not in DEFAULT_LIMITS:
            raise doc.error(f"template.max_lengths.{field_}", f"unknown field; fields: {', '.join(DEFAULT_LIMITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 5:
            raise doc.error(f"template.max_lengths.{field_}", "must be a whole number of characters, at least 5")
        limits[field_] = n
    samples = data.get("proof_samples", 12)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 500:
        raise doc.error("proof_samples", "must be between 1 and 500")
    delivery = data.get("delivery", "batch")
    if delivery not in DELIVERY:
        raise doc.error("delivery", f"must be one of: {', '.join(DELIVERY)}")
    if delivery == "single" and source != "print_queue":
        raise doc.error("delivery", "single-recipient jobs come from the queue: set `source: print_queue`")
    holdout = data.get("holdout", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout <= 0.5:
        raise doc.error("holdout", "must be a share between 0 and 0.5 (0.1: one in ten eligible recipients is kept out)")
    if holdout and delivery == "single":
        raise doc.error("holdout", "a single-recipient job is asked for by a person or a journey; its holdout is the "
                                   "journey's (config/journeys), not the print campaign's")
    return Campaign(name, Path(path), doc.sha256, str(data.get("description", "")), source, audience, tuple(branches),
                    dedupe, limits, str(template.get("image_root", "")), samples, delivery, float(holdout))


COSTS_FILE = "costs.yaml"


def load_campaigns(folder: str | Path) -> dict[str, Campaign]:
    out: dict[str, Campaign] = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        if path.name == COSTS_FILE:  # the campaigns' costs (reporting), not a print campaign
            continue
        campaign = load_campaign(path)
        if campaign.name in out:
            raise ConfigError(path, "name", f"campaign name '{campaign.name}' is also used by {out[campaign.name].path.name}")
        out[campaign.name] = campaign
    return out


def _check_condition(doc: YamlDoc, cond, key: str) -> None:
    cond = require_mapping(doc, cond, key)
    combos = [k for k in ("all", "any", "not") if k in cond]
    if combos:
        if len(cond) != 1:
            raise doc.error(key, "a combination (all / any / not) stands alone")
        inner = cond[combos[0]]
        if combos[0] == "not":
            _check_condition(doc, inner, f"{key}.not")
            return
        if not isinstance(inner, list) or not inner:
            raise doc.error(f"{key}.{combos[0]}", "must list at least one condition")
        for i, c in enumerate(inner):
            _check_condition(doc, c, f"{key}.{combos[0]}[{i}]")
        return
    check_keys(doc, cond, key, ("field", *OPERATORS), required=("field",))
    if cond["field"] not in FIELDS:
        raise doc.error(f"{key}.field", f"unknown field '{cond['field']}'; fields: {', '.join(sorted(FIELDS))}")
    ops = [k for k in cond if k != "field"]
    if len(ops) != 1:
        raise doc.error(key, f"needs exactly one operator of: {', '.join(OPERATORS)}")
    op, value = ops[0], cond[ops[0]]
    if op in ("in", "not_in") and not isinstance(value, list):
        raise doc.error(f"{key}.{op}", "must be a list of values")
    if op in ("at_least", "at_most") and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise doc.error(f"{key}.{op}", "must be a number")
    if op == "is_null" and not isinstance(value, bool):
        raise doc.error(f"{key}.{op}", "must be true or false")
    if op == "matches":
        try:
            re.compile(str(value))
        except re.error as exc:
            raise doc.error(f"{key}.{op}", f"not a regular expression: {exc}") from None


def evaluate(cond: dict | None, frame: pd.DataFrame) -> np.ndarray:
    """The rows of ``frame`` for which the condition holds (a validated condition)."""
    if cond is None:
        return np.ones(len(frame), dtype=bool)
    if "all" in cond:
        out = np.ones(len(frame), dtype=bool)
        for c in cond["all"]:
            out &= evaluate(c, frame)
        return out
    if "any" in cond:
        out = np.zeros(len(frame), dtype=bool)
        for c in cond["any"]:
            out |= evaluate(c, frame)
        return out
    if "not" in cond:
        return ~evaluate(cond["not"], frame)
    col = frame[cond["field"]]
    op = next(k for k in cond if k != "field")
    value = cond[op]
    present = col.notna().to_numpy()
    if op == "is_null":
        return ~present if value else present
    if op in ("at_least", "at_most"):
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            hit = num >= value if op == "at_least" else num <= value
        return hit & ~np.isnan(num)
    text = col.astype(object).where(col.notna(), None)
    values = value if isinstance(value, list) else [value]
    if op in ("equals", "in", "not_equals", "not_in"):
        hit = _isin(col, values) & present
        return ~hit if op in ("not_equals", "not_in") else hit
    if op == "contains":
        return text.str.contains(str(value), regex=False).fillna(False).to_numpy(dtype=bool)
    return text.str.contains(str(value), regex=True).fillna(False).to_numpy(dtype=bool)


def _isin(col: pd.Series, values: list) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col) or all(isinstance(v, bool) for v in values):
        return col.isin(values).to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(col) and all(isinstance(v, (int, float)) for v in values):
        return col.isin(values).to_numpy(dtype=bool)
    return col.astype(str).isin({str(x) for x in values}).to_numpy(dtype=bool) & col.notna().to_numpy()


def choose_content(campaign: Campaign, frame: pd.DataFrame) -> np.ndarray:
    """Index of the chosen branch per recipient: the first whose condition holds."""
    chosen = np.full(len(frame), -1, dtype=int)
    for i, branch in enumerate(campaign.branches):
        hit = evaluate(branch.when, frame) & (chosen < 0)
        chosen[hit] = i
    return chosen
