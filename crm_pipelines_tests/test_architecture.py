"""The rule of docs/architecture.md, kept by the code: a package imports only packages below it.

Every import of every module is read (function-level ones too: an import inside a function runs
upward just the same), resolved to the module it names and checked against the floors below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "crm_pipelines"

# Bottom to top. Packages on one floor do not import each other (the outlets are independent).
CORE_FLOORS = [
    {"model"},
    {"platform"},
    {"cleaning"},
    {"privacy_screen"},
    {"sources"},
    {"privacy"},
    {"golden"},
    {"scoring"},
    {"crm", "print"},
    # Journeys use the CRM (segment lists) and print (single-recipient brochures) as channels.
    {"activation"},
    # The closed loop reads every channel's touches (journeys, print, sales) and the CRM's deals.
    {"reporting"},
]
# Above core: the code location's settings (environment), the Dagster wiring, the table of contents. Beside the floors: command lines, the
# demo, local servers and project tools, which may use any floor but are used by none.
WIRING = ["settings", "defs", "definitions"]
BESIDE = {"demo", "devtools", "matching", "nightly", "crm", "privacy", "activation"}


def floor_of(module: str) -> tuple[int, str] | None:
    """(floor, package) of a crm_pipelines module; None for the packages beside the floors."""
    parts = module.split(".")
    if parts[0] != "crm_pipelines" or len(parts) < 2:
        return None
    if parts[1] == "core":
        if len(parts) < 3:
            return (-1, "core")
        name = parts[2]
        for i, floor in enumerate(CORE_FLOORS):
            if name in floor:
                return (i, name)
        raise AssertionError(f"{module}: core/{name} is on no floor; add it to CORE_FLOORS and docs/architecture.md")
    if parts[1] in WIRING:
        return (len(CORE_FLOORS) + WIRING.index(parts[1]), parts[1])
    assert parts[1] in BESIDE, f"{module}: crm_pipelines/{parts[1]} is neither on a floor nor beside them"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file; ``from X import y`` counts as X.y when
    X.y is a module, else as X."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").exists()
                out.append((node.lineno, sub if is_module else target))
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        here = floor_of(mod)
        for line, target in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            top = target.split(".")[0]
            if here is not None and here[1] not in WIRING and top == "dagster":
                found.append(f"{where}: core knows nothing of Dagster")
            if not target.startswith("crm_pipelines"):
                continue
            there = floor_of(target)
            if here is None:
                continue  # beside the floors: may use any
            if there is None:
                found.append(f"{where}: {here[1]} may not import what stands beside the floors")
            elif there[1] == "core":
                found.append(f"{where}: import the module itself, not the core package")
            elif there[1] != here[1] and there[0] >= here[0]:
                rel = "the same floor" if there[0] == here[0] else "a floor above"
                found.append(f"{where}: {there[1]} is on {rel}")
    return found


def test_every_package_imports_only_packages_below_it():
    assert violations() == []


@pytest.mark.parametrize("source, target, message", [
    ("crm_pipelines.core.sources.ingest", "from ..privacy.erasure import erase", "a floor above"),
    ("crm_pipelines.core.print.lists", "from ..crm.sync import push", "the same floor"),
    ("crm_pipelines.core.cleaning.names", "import dagster as dg", "knows nothing of Dagster"),
    ("crm_pipelines.core.golden.build", "from ...devtools.crm_server import CrmServer", "beside the floors"),
])
def test_the_check_finds_an_import_that_breaks_the_rule(tmp_path, monkeypatch, source, target, message):
    """The check itself can fail: a copy of the package with one bad import added is reported."""
    import shutil

    copy = tmp_path / "crm_pipelines"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "config"))
    path = copy / Path(*source.split(".")[1:]).with_suffix(".py")
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _broken():\n    {target}\n", encoding="utf-8")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", copy)
    found = violations()
    assert len(found) == 1 and message in found[0] and path.name in found[0], found
