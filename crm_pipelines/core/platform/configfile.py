"""Loading user-edited YAML so that every error names the file, the key and the line.

Data engineers edit mappings, layouts and rules by hand; an error that only says
"KeyError: 'target'" sends them hunting. Every problem found while loading one of
these files is raised as :class:`ConfigError` with a dotted key path
(``fields.anrede.transforms[1]``) and, where the YAML parser knows it, the line.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A user-edited configuration file is invalid. ``str()`` names file, key and line."""

    def __init__(self, file: str | Path, key: str, message: str, line: int | None = None):
        self.file = str(file)
        self.key = key
        self.line = line
        self.message = message
        where = f"{self.file}"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key or '<top>'}: {message}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# libyaml's parser where PyYAML has it (its wheels do): every process of a run loads some 40 config files
# with the code location, and the pure-Python parser took half a second of that.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML file that can tell which line a key path came from."""

    path: Path
    data: Any
    raw: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def line_of(self, key_path: str) -> int | None:
        # The node tree (with line marks) is composed only when an error needs a line.
        node = yaml.compose(self.raw.decode("utf-8"), Loader=_LOADER) if key_path else None
        if node is None or not key_path:
            return None
        parts = _split_key_path(key_path)
        i = 0
        while i < len(parts):
            part = parts[i]
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                # Source field names may contain dots ("properties.email"): try the longest key first.
                for j in range(len(parts), i, -1):
                    if not all(isinstance(p, str) for p in parts[i:j]):
                        continue
                    candidate = ".".join(parts[i:j])  # type: ignore[arg-type]
                    child = next((v for k, v in node.value if getattr(k, "value", None) == candidate), None)
                    if child is not None:
                        node, i = child, j
                        break
                else:
                    return node.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node, i = node.value[part], i + 1
            else:
                return node.start_mark.line + 1
        return node.start_mark.line + 1

    def error(self, key_path: str, message: str) -> ConfigError:
        return ConfigError(self.path, key_path, message, self.line_of(key_path))


def _split_key_path(key_path: str) -> list[str | int]:
    parts: list[str | int] = []
    for dotted in key_path.split("."):
        while "[" in dotted:
            head, _, rest = dotted.partition("[")
            if head:
                parts.append(head)
            idx, _, dotted = rest.partition("]")
            parts.append(int(idx))
        if dotted:
            parts.append(dotted)
    return parts


def load_yaml(path: str | Path) -> YamlDoc:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, "", "file is not UTF-8 encoded", line) from exc
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, "", f"invalid YAML: {problem}", mark.line + 1 if mark else None) from exc
    return YamlDoc(path=path, data=data, raw=raw)


def require_mapping(doc: YamlDoc, value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise doc.error(key, f"must be a mapping (key: value), got {type(value).__name__}")
    return value


def require_choices(doc: YamlDoc, value: Any, key: str, allowed: Iterable[str], what: str) -> list:
    """A non-empty list whose every item is one of ``allowed`` (the error names the item's key)."""
    allowed = list(allowed)
    if not isinstance(value, list) or not value:
        raise doc.error(key, f"must be a non-empty list of {', '.join(allowed)}")
    for i, item in enumerate(value):
        if item not in allowed:
            raise doc.error(f"{key}[{i}]", f"unknown {what} {item!r}{did_you_mean(str(item), allowed)}; known: "
                                           f"{', '.join(allowed)}")
    return value


def check_keys(doc: YamlDoc, value: dict, key: str, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    allowed = list(allowed)
    for k in value:
        if k not in allowed:
            prefix = f"{key}." if key else ""
            raise doc.error(f"{prefix}{k}", f"unknown key '{k}'{did_you_mean(str(k), allowed)}; allowed: {', '.join(allowed)}")
    for k in required:
        if k not in value:
            raise doc.error(key, f"missing required key '{k}'")
