"""Matching settings: data, validated on load (errors name file and key), separate from the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...platform.configfile import YamlDoc, check_keys, load_yaml, require_mapping

COMPARISON_KINDS = ("exact", "exact_any", "string", "email", "postcode", "address", "legal_form")
# The columns of an address comparison, in this order: one comparison, so that a move (street, number, PLZ and
# town all different) counts once as one fact, and a PLZ with its town counts once, not twice.
ADDRESS_PARTS = ("street", "house number", "postcode", "town")
SCORERS = ("jaro_winkler", "token_set", "ratio")
RULES = ("source_priority", "most_recent", "most_frequent")


@dataclass(frozen=True)
class ComparisonSpec:
    name: str
    kind: str
    columns: tuple[str, ...]
    scorer: str = "jaro_winkler"
    thresholds: tuple[float, ...] = ()
    term_frequency: bool = False

    @property
    def column(self) -> str:
        return self.columns[0]

    @property
    def top_level(self) -> int:
        """The level code of an exact agreement."""
        return {"exact": 1, "exact_any": 1, "string": len(self.thresholds) + 1, "email": 3, "postcode": 2,
                "address": 4, "legal_form": 2}[self.kind]

    def level_names(self) -> list[str]:
        if self.kind in ("exact", "exact_any"):
            return ["different", "exact"]
        if self.kind == "string":
            return ["different", *[f">= {t:g}" for t in reversed(self.thresholds)], "exact"]
        if self.kind == "email":
            return ["different", "similar mailbox", "same mailbox, other domain", "exact"]
        if self.kind == "postcode":
            return ["different", "same region", "exact"]
        if self.kind == "address":
            return ["different", "same town", "same postcode", "same street", "same address"]
        return ["conflicting", "compatible", "same"]


@dataclass(frozen=True)
class EntityMatchSpec:
    entity: str
    blocking: tuple[tuple[str, ...], ...]
    comparisons: tuple[ComparisonSpec, ...]
    must_link: tuple[str, ...] = ()
    name_swap: tuple[str, str] | None = None
    match_threshold: float = 0.95
    review_threshold: float = 0.5
    contradiction_threshold: float = 0.01
    max_block_size: int = 400
    # A rule's own limit (a rule on the names alone compares only the people whose names are rare).
    block_limits: tuple[tuple[tuple[str, ...], int], ...] = ()

    def block_limit(self, rule: tuple[str, ...]) -> int:
        return dict(self.block_limits).get(rule, self.max_block_size)
    max_cluster_size: int = 50
    em_iterations: int = 0
    u_sample_pairs: int = 300_000
    training_rules: tuple[tuple[str, ...], ...] = ()
    training_recall: float = 0.8
    # Role and shared mailboxes (info@, einkauf@ ...): the same address is evidence, never a must-link.
    shared_mailboxes: tuple[str, ...] = ()       # mailbox names (the part before @, up to . - _ + or a digit)
    shared_mailbox_names: int = 0                # an address used by this many clearly different people is shared
    # Groups of comparisons: a pair whose records both have, and differ in, every comparison of a group, and share no
    # identifier (exact comparison), contradicts (two companies of one name in one town: each its own website and
    # street).
    conflicts: tuple[tuple[str, ...], ...] = ()

    def without_columns(self, missing: set[str]) -> "EntityMatchSpec":
        """The same settings for a data set that lacks some columns (the generic dedupe command)."""
        from dataclasses import replace

        blocking = tuple(r for r in self.blocking if not any(
            all(alt in missing for alt in col.split("|")) for col in r))
        comps = tuple(c for c in self.comparisons if not all(col in missing for col in c.columns))
        swap = self.name_swap if self.name_swap and not (set(self.name_swap) & missing) else None
        must = tuple(c for c in self.must_link if c not in missing)
        names = {c.name for c in comps}
        training = tuple(r for r in self.training_rules if set(r) <= names)
        conflicts = tuple(g for g in self.conflicts if set(g) <= names)
        return replace(self, blocking=blocking, comparisons=comps, name_swap=swap, must_link=must, training_rules=training,
                       conflicts=conflicts)


@dataclass(frozen=True)
class SurvivorshipSpec:
    source_priority: tuple[str, ...]
    default_rule: str = "source_priority"
    fields: dict[str, str] = field(default_factory=dict)
    # Fields that must come from one record: the first (the anchor) is chosen by its rule, the others
    # are taken from the record that supplied it; a postcode from one record and a country from
    # another would make an address that exists nowhere.
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def rule_for(self, name: str) -> str:
        return self.fields.get(name, self.default_rule)


@dataclass(frozen=True)
class MatchingConfig:
    persons: EntityMatchSpec
    accounts: EntityMatchSpec
    survivorship: dict[str, SurvivorshipSpec]
    max_match_rate_change: float
    sha256: str
    max_record_growth: float = 0.25  # the jump check compares runs whose record base grew by at most this
    generic_persons: EntityMatchSpec | None = None


def _float(doc: YamlDoc, value, key: str, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise doc.error(key, f"must be a number between {lo:g} and {hi:g}")
    return float(value)


def _int(doc: YamlDoc, value, key: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise doc.error(key, f"must be a whole number of at least {lo}")
    return value


def _comparison_lists(doc: YamlDoc, lists: list, key: str, comparisons: set[str], what: str) -> None:
    """Each of ``lists`` a non-empty list of names of ``comparisons`` (training rules, conflicts groups)."""
    for i, names in enumerate(lists):
        if not isinstance(names, list) or not names:
            raise doc.error(f"{key}[{i}]", f"{what} is a list of comparison names")
        for cname in names:
            if cname not in comparisons:
                raise doc.error(f"{key}[{i}]", f"unknown comparison '{cname}'")


def _entity(doc: YamlDoc, name: str) -> EntityMatchSpec:
    data = require_mapping(doc, doc.data.get(name), name)
    check_keys(doc, data, name, ("blocking", "max_block_size", "must_link", "name_swap", "comparisons", "bands",
                                 "max_cluster_size", "em_iterations", "u_sample_pairs", "training_rules", "training_recall",
                                 "shared_mailboxes", "conflicts"),
               ("blocking", "comparisons", "bands", "training_rules"))
    blocking = data["blocking"]
    if not isinstance(blocking, list) or not blocking:
        raise doc.error(f"{name}.blocking", "must be a non-empty list of rules, each a list of columns")
    rules, limits = [], {}
    for i, rule in enumerate(blocking):
        key = f"{name}.blocking[{i}]"
        if isinstance(rule, dict):  # {columns: [...], max_block_size: n}: a rule with a block limit of its own
            check_keys(doc, rule, key, ("columns", "max_block_size"), ("columns", "max_block_size"))
            limit = _int(doc, rule["max_block_size"], f"{key}.max_block_size", 2)
            rule, key = rule["columns"], f"{key}.columns"
        else:
            limit = None
        if not isinstance(rule, list) or not rule or not all(isinstance(c, str) for c in rule):
            raise doc.error(key, "a rule is a list of column names, e.g. [last_kp, postal_code], or "
                                 "{columns: [...], max_block_size: n}")
        rules.append(tuple(rule))
        if limit is not None:
            limits[tuple(rule)] = limit
    comps = []
    seen = set()
    for i, raw in enumerate(data["comparisons"] or []):
        key = f"{name}.comparisons[{i}]"
        raw = require_mapping(doc, raw, key)
        check_keys(doc, raw, key, ("name", "kind", "columns", "scorer", "thresholds", "term_frequency"),
                   ("name", "kind", "columns"))
        if raw["name"] in seen:
            raise doc.error(f"{key}.name", f"comparison '{raw['name']}' is defined twice")
        seen.add(raw["name"])
        if raw["kind"] not in COMPARISON_KINDS:
            raise doc.error(f"{key}.kind", f"unknown kind '{raw['kind']}'; known: {', '.join(COMPARISON_KINDS)}")
        cols = raw["columns"]
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) for c in cols):
            raise doc.error(f"{key}.columns", "must be a list of column names")
        if raw["kind"] == "address" and len(cols) != len(ADDRESS_PARTS):
            raise doc.error(f"{key}.columns", f"an address comparison names {len(ADDRESS_PARTS)} columns: "
                                              f"{', '.join(ADDRESS_PARTS)}")
        scorer = raw.get("scorer", "jaro_winkler")
        if scorer not in SCORERS:
            raise doc.error(f"{key}.scorer", f"unknown scorer '{scorer}'; known: {', '.join(SCORERS)}")
        thresholds = raw.get("thresholds", [])
        if raw["kind"] == "string":
            if not isinstance(thresholds, list) or not thresholds:
                raise doc.error(f"{key}.thresholds", "a string comparison needs similarity thresholds, e.g. [0.92, 0.8]")
            thresholds = [_float(doc, t, f"{key}.thresholds") for t in thresholds]
            if thresholds != sorted(thresholds, reverse=True):
                raise doc.error(f"{key}.thresholds", "must be in descending order")
        comps.append(ComparisonSpec(name=raw["name"], kind=raw["kind"], columns=tuple(cols), scorer=scorer,
                                    thresholds=tuple(thresholds), term_frequency=bool(raw.get("term_frequency", False))))
    if not comps:
        raise doc.error(f"{name}.comparisons", "needs at least one comparison")
    bands = require_mapping(doc, data["bands"], f"{name}.bands")
    check_keys(doc, bands, f"{name}.bands", ("match", "review", "contradiction"), ("match", "review"))
    match = _float(doc, bands["match"], f"{name}.bands.match")
    review = _float(doc, bands["review"], f"{name}.bands.review")
    contradiction = _float(doc, bands.get("contradiction", 0.01), f"{name}.bands.contradiction")
    if not contradiction < review < match:
        raise doc.error(f"{name}.bands", "needs contradiction < review < match")
    training = data["training_rules"]
    if not isinstance(training, list) or not training:
        raise doc.error(f"{name}.training_rules", "needs at least one rule: a list of comparison names, e.g. [email]")
    _comparison_lists(doc, training, f"{name}.training_rules", seen, "a rule")
    conflicts = data.get("conflicts") or []
    if not isinstance(conflicts, list):
        raise doc.error(f"{name}.conflicts", "must be a list of groups, each a list of comparison names, e.g. [[domain, street]]")
    _comparison_lists(doc, conflicts, f"{name}.conflicts", seen, "a group")
    swap = data.get("name_swap")
    if swap is not None and (not isinstance(swap, list) or len(swap) != 2):
        raise doc.error(f"{name}.name_swap", "must name two columns: [first, last]")
    shared = require_mapping(doc, data.get("shared_mailboxes") or {}, f"{name}.shared_mailboxes")
    check_keys(doc, shared, f"{name}.shared_mailboxes", ("names", "used_by_people"))
    roles = shared.get("names") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
        raise doc.error(f"{name}.shared_mailboxes.names", "must be a list of mailbox names, e.g. [info, vertrieb]")
    if shared.get("used_by_people") == 1:
        raise doc.error(f"{name}.shared_mailboxes.used_by_people", "one person is no sharing: 0 (off) or at least 2")
    if shared and "email_norm" not in {c for comp in comps for c in comp.columns}:
        raise doc.error(f"{name}.shared_mailboxes", "needs an e-mail comparison on email_norm")
    return EntityMatchSpec(
        entity=name, blocking=tuple(rules), comparisons=tuple(comps), must_link=tuple(data.get("must_link") or ()),
        name_swap=tuple(swap) if swap else None, match_threshold=match, review_threshold=review,
        contradiction_threshold=contradiction,
        max_block_size=_int(doc, data.get("max_block_size", 400), f"{name}.max_block_size", 2),
        block_limits=tuple(limits.items()),
        max_cluster_size=_int(doc, data.get("max_cluster_size", 50), f"{name}.max_cluster_size", 2),
        em_iterations=_int(doc, data.get("em_iterations", 0), f"{name}.em_iterations", 0),
        u_sample_pairs=_int(doc, data.get("u_sample_pairs", 300_000), f"{name}.u_sample_pairs", 1000),
        training_rules=tuple(tuple(r) for r in training), conflicts=tuple(tuple(g) for g in conflicts),
        training_recall=_float(doc, data.get("training_recall", 0.8), f"{name}.training_recall", 0.01, 1.0),
        shared_mailboxes=tuple(sorted({r.strip().lower() for r in roles})),
        shared_mailbox_names=_int(doc, shared.get("used_by_people", 0), f"{name}.shared_mailboxes.used_by_people", 0)
        if shared else 0,
    )


def load_matching_config(path: str | Path) -> MatchingConfig:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("persons", "accounts", "survivorship", "checks", "generic_persons"),
               ("persons", "accounts", "survivorship"))
    surv = {}
    raw_surv = require_mapping(doc, data["survivorship"], "survivorship")
    for entity in ("persons", "accounts"):
        key = f"survivorship.{entity}"
        s = require_mapping(doc, raw_surv.get(entity), key)
        check_keys(doc, s, key, ("source_priority", "default_rule", "fields", "groups"), ("source_priority",))
        rule = s.get("default_rule", "source_priority")
        if rule not in RULES:
            raise doc.error(f"{key}.default_rule", f"unknown rule '{rule}'; known: {', '.join(RULES)}")
        fields = require_mapping(doc, s.get("fields", {}) or {}, f"{key}.fields")
        for f, r in fields.items():
            if r not in RULES:
                raise doc.error(f"{key}.fields.{f}", f"unknown rule '{r}'; known: {', '.join(RULES)}")
        groups = require_mapping(doc, s.get("groups", {}) or {}, f"{key}.groups")
        seen: set[str] = set()
        for g, members in groups.items():
            if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members):
                raise doc.error(f"{key}.groups.{g}", "must list at least two fields; the first one is chosen by its rule")
            if seen & set(members):
                raise doc.error(f"{key}.groups.{g}", f"field(s) {', '.join(sorted(seen & set(members)))} already in another group")
            for m in members[1:]:
                if m in fields:
                    raise doc.error(f"{key}.fields.{m}", f"'{m}' follows '{members[0]}' in group '{g}'; it has no rule of its own")
            seen |= set(members)
        surv[entity] = SurvivorshipSpec(tuple(s["source_priority"]), rule, dict(fields),
                                        {g: tuple(m) for g, m in groups.items()})
    checks = require_mapping(doc, data.get("checks", {}) or {}, "checks")
    check_keys(doc, checks, "checks", ("max_match_rate_change", "max_record_growth"))
    return MatchingConfig(
        persons=_entity(doc, "persons"), accounts=_entity(doc, "accounts"), survivorship=surv,
        max_match_rate_change=_float(doc, checks.get("max_match_rate_change", 0.1), "checks.max_match_rate_change"),
        sha256=doc.sha256,
        max_record_growth=_float(doc, checks.get("max_record_growth", 0.25), "checks.max_record_growth", 0.0, 10.0),
        generic_persons=_entity(doc, "generic_persons") if "generic_persons" in data else None,
    )
