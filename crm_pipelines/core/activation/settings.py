"""``config/activation.yaml`` and the journeys in ``config/journeys/``, validated on load."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..platform.configfile import ConfigError, check_keys, load_yaml, require_choices, require_mapping

DERIVED = ("golden_id", "interests", "preferred_channel")
ATTRIBUTE_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,49}$")
EXITS = ("converted", "became_sql", "unsubscribed", "erased", "left_segment")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
EVENT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class ActivationSettings:
    tool: str
    folder: str
    all_contacts_list: str
    attributes: dict[str, str]            # tool attribute -> profile field
    doi_list: str
    doi_template_id: int
    doi_redirect_url: str
    touches_per_week: int
    holdout_salt: str
    source: str = ""

    def attribute_types(self) -> dict[str, str]:
        """The tool's type of each attribute: numbers are floats, everything else text."""
        return {name: "float" if src == "lead.score" else "text" for name, src in self.attributes.items()}


def load_activation_settings(path: str | Path) -> ActivationSettings:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("destination", "frequency_cap", "holdout_salt"), required=("destination", "frequency_cap"))
    d = require_mapping(doc, data["destination"], "destination")
    check_keys(doc, d, "destination", ("tool", "folder", "all_contacts_list", "attributes", "double_opt_in"),
               required=("tool", "folder", "all_contacts_list", "attributes", "double_opt_in"))
    if d["tool"] != "brevo":
        raise doc.error("destination.tool", "only brevo has a connector so far (core/activation/brevo.py)")
    for key in ("folder", "all_contacts_list"):
        if not isinstance(d[key], str) or not d[key].strip():
            raise doc.error(f"destination.{key}", "must be a non-empty name")
    attrs = require_mapping(doc, d["attributes"], "destination.attributes")
    for name, src in attrs.items():
        if not ATTRIBUTE_NAME.match(str(name)):
            raise doc.error(f"destination.attributes.{name}", "attribute names are upper case letters, digits and _")
        if not isinstance(src, str) or not (src in DERIVED or src.split(".", 1)[0] in ("contact", "account", "lead")
                                            and "." in src):
            raise doc.error(f"destination.attributes.{name}",
                            f"must be contact.<field>, account.<field>, lead.score, lead.stage or one of {', '.join(DERIVED)}")
    doi = require_mapping(doc, d["double_opt_in"], "destination.double_opt_in")
    check_keys(doc, doi, "destination.double_opt_in", ("list", "template_id", "redirect_url"),
               required=("list", "template_id", "redirect_url"))
    if isinstance(doi["template_id"], bool) or not isinstance(doi["template_id"], int) or doi["template_id"] < 1:
        raise doc.error("destination.double_opt_in.template_id", "must be the tool's template ID (a whole number)")
    cap = require_mapping(doc, data["frequency_cap"], "frequency_cap")
    check_keys(doc, cap, "frequency_cap", ("touches_per_week",), required=("touches_per_week",))
    per_week = cap["touches_per_week"]
    if isinstance(per_week, bool) or not isinstance(per_week, int) or per_week < 1:
        raise doc.error("frequency_cap.touches_per_week", "must be a whole number >= 1")
    return ActivationSettings(tool=d["tool"], folder=d["folder"], all_contacts_list=d["all_contacts_list"],
                              attributes={str(k): str(v) for k, v in attrs.items()}, doi_list=str(doi["list"]),
                              doi_template_id=int(doi["template_id"]), doi_redirect_url=str(doi["redirect_url"]),
                              touches_per_week=per_week, holdout_salt=str(data.get("holdout_salt") or "holdout"),
                              source=str(path))


@dataclass(frozen=True)
class Trigger:
    event: str                   # the event type that starts the wait
    wait_minutes: int            # the window: fired when it closes without one of ``unless``
    unless: tuple[str, ...]      # event types (or ``web_form_lead``) that cancel it
    lookback_minutes: int        # how far back triggers are considered


@dataclass(frozen=True)
class Journey:
    name: str
    label: str
    description: str
    owner: str
    channel: str                 # email | print
    segment: str | None          # entry segment, or
    trigger: Trigger | None      # an entry trigger
    list_name: str | None        # the tool's list its workflow starts on (email)
    event: str | None            # the tool's event its workflow starts on (email)
    print_campaign: str | None   # the print campaign of its single-recipient job (print)
    exits: tuple[str, ...]
    reentry_days: int | None     # None: never again
    holdout: float
    source: str = ""
    extra: dict = field(default_factory=dict)


def load_journey(path: str | Path, segments: set[str]) -> Journey:
    doc = load_yaml(path)
    data = require_mapping(doc, doc.data, "")
    check_keys(doc, data, "", ("name", "label", "description", "owner", "entry", "channel", "destination", "print",
                               "exit", "reentry", "holdout"), required=("name", "description", "entry", "channel", "exit"))
    name = data["name"]
    if not isinstance(name, str) or not NAME.match(name) or Path(path).stem != name:
        raise doc.error("name", f"must be lower case letters, digits and _, and equal the file name ({Path(path).stem!r})")
    entry = require_mapping(doc, data["entry"], "entry")
    check_keys(doc, entry, "entry", ("segment", "trigger"))
    if ("segment" in entry) == ("trigger" in entry):
        raise doc.error("entry", "give a segment or a trigger (one of them)")
    segment, trigger = None, None
    if "segment" in entry:
        segment = entry["segment"]
        if segment not in segments:
            raise doc.error("entry.segment", f"unknown segment {segment!r}; known: {', '.join(sorted(segments))}")
    else:
        t = require_mapping(doc, entry["trigger"], "entry.trigger")
        check_keys(doc, t, "entry.trigger", ("event", "wait_minutes", "unless", "lookback_minutes"),
                   required=("event", "wait_minutes"))
        for key in ("wait_minutes", "lookback_minutes"):
            v = t.get(key, 240)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise doc.error(f"entry.trigger.{key}", "must be a whole number of minutes >= 1")
        unless = t.get("unless") or []
        if not isinstance(unless, list):
            raise doc.error("entry.trigger.unless", "must be a list of event types")
        trigger = Trigger(str(t["event"]), int(t["wait_minutes"]), tuple(map(str, unless)), int(t.get("lookback_minutes", 240)))
    channel = data["channel"]
    if channel not in ("email", "print"):
        raise doc.error("channel", "must be email or print")
    list_name = event = campaign = None
    if channel == "email":
        dest = require_mapping(doc, data.get("destination"), "destination")
        check_keys(doc, dest, "destination", ("list", "event"))
        if not dest:
            raise doc.error("destination", "an e-mail journey feeds the tool's workflow by a list, an event or both")
        list_name = dest.get("list")
        event = dest.get("event")
        if event is not None and not EVENT_NAME.match(str(event)):
            raise doc.error("destination.event", "event names hold letters, digits, - and _ only (Brevo's rule)")
    else:
        p = require_mapping(doc, data.get("print"), "print")
        check_keys(doc, p, "print", ("campaign",), required=("campaign",))
        campaign = str(p["campaign"])
    exits = require_choices(doc, data["exit"], "exit", EXITS, "exit")
    reentry = data.get("reentry", "never")
    if reentry == "never":
        reentry_days = None
    else:
        r = require_mapping(doc, reentry, "reentry")
        check_keys(doc, r, "reentry", ("after_days",), required=("after_days",))
        if isinstance(r["after_days"], bool) or not isinstance(r["after_days"], int) or r["after_days"] < 0:
            raise doc.error("reentry.after_days", "must be a whole number of days >= 0")
        reentry_days = int(r["after_days"])
    holdout = data.get("holdout", 0.1)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise doc.error("holdout", "must be a share between 0 and 1 (0.1 = every tenth contact is never enrolled)")
    return Journey(name=name, label=str(data.get("label") or name), description=str(data["description"]),
                   owner=str(data.get("owner") or "team:marketing-ops"), channel=channel, segment=segment,
                   trigger=trigger, list_name=list_name, event=event, print_campaign=campaign,
                   exits=tuple(exits), reentry_days=reentry_days, holdout=float(holdout), source=str(path))


def load_journeys(folder: str | Path, segments: set[str]) -> dict[str, Journey]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(folder, "", "journeys folder does not exist")
    return {j.name: j for j in (load_journey(p, segments) for p in sorted(folder.glob("*.yaml")))}
