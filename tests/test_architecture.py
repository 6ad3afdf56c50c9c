"""Imports point one way: web and the CLI -> jobs -> sandbox -> policies -> yushan's base.

Every module of Yushan's packages is read with ``ast``; every import counts, at the top of a
module or inside a function (a late import is a dependency all the same). A module may
import its own layer or any layer below; ``audit`` and ``onboarding`` stand beside the
chain and import only downward. Cycles between modules are refused too, inside a package
as well (imports made only for type checkers close no cycle: they never run). The few deliberate exceptions are listed below, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("yushan", "audit", "policies", "sandbox", "jobs", "onboarding", "web")

# Layers, lowest first. A module imports modules of its own layer or of lower layers only.
# ``yushan/cli.py`` (with ``__main__`` and ``demo``, which seeds a home for the CLI) is the
# command-line entry point: it wires every package together, so it is the top layer.
BASE = 0  # yushan: config, db, models, accounts, access, catalog records
AUDIT = 1  # beside the chain: the base only
POLICIES = 2
SANDBOX = 3
SERVICES = 4  # jobs; onboarding stands beside it (neither imports the other)
WEB = 5
ENTRY = 6

# ``yushan.backup`` copies what every part keeps and signs the copy's audit head.
# ``yushan.keys`` re-wraps what every part keeps (datasets, outputs) under a new master key.
TOP_MODULES = {"yushan.cli", "yushan.__main__", "yushan.demo", "yushan.backup", "yushan.keys"}
SIBLINGS = {("jobs", "onboarding"), ("onboarding", "jobs")}

# (importer, imported) -> why it is allowed. Keep this short.
ALLOWED: dict[tuple[str, str], str] = {}
# Module cycles that are known and owned elsewhere: frozenset of the modules -> reason.
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"policies.engine", "policies.enforce"}):
        "the policy gate (policies.gate, the lead's rewrite) takes check and execute apart",
}


def layer(module: str) -> int:
    package = module.split(".")[0]
    if module in TOP_MODULES:
        return ENTRY
    return {"yushan": BASE, "audit": AUDIT, "policies": POLICIES, "sandbox": SANDBOX,
            "jobs": SERVICES, "onboarding": SERVICES, "web": WEB}[package]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "versions" in path.parts:
                continue  # generated Alembic revisions
            found[_module_name(path)] = path
    return found


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``target`` names (``a.b.c`` -> ``a.b`` if ``a.b.c`` is
    a name inside ``a.b``)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def _typing_only(tree: ast.Module) -> set[int]:
    """The import nodes under ``if TYPE_CHECKING:`` (never run: no cycle at run time)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            found.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return found


def imports_of(module: str, path: Path, known: dict[str, Path], *, typing: bool = True) -> set[str]:
    """The Yushan modules ``module`` imports, anywhere in its body; with ``typing=False``
    the imports made for type checkers only are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    skip = set() if typing else _typing_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, *([node.module] if node.module else [])])
            else:
                stem = node.module or ""
            # ``from pkg import submodule`` depends on the submodule, not on pkg's __init__.
            targets = [f"{stem}.{alias.name}" for alias in node.names] or [stem]
        for target in targets:
            if target.split(".")[0] not in PACKAGES:
                continue
            resolved = _resolve(target, known)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(*, typing: bool = True) -> dict[str, set[str]]:
    known = all_modules()
    return {module: imports_of(module, path, known, typing=typing) for module, path in known.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    bad = []
    for module, targets in graph.items():
        for target in targets:
            mine, theirs = module.split(".")[0], target.split(".")[0]
            upward = layer(target) > layer(module) or (mine, theirs) in SIBLINGS
            if upward and (module, target) not in ALLOWED:
                bad.append((module, target))
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


@pytest.fixture(scope="module")
def runtime_graph() -> dict[str, set[str]]:
    """Without the imports for type checkers: those never run, so they close no cycle."""
    return import_graph(typing=False)


def test_the_walk_sees_every_package_and_late_imports(graph):
    assert {m.split(".")[0] for m in graph} == set(PACKAGES)
    # A function-level import is found: the CLI imports the web app inside a command.
    assert "web" in graph["yushan.cli"] or "web.app" in graph["yushan.cli"]


def test_no_module_imports_upward(graph):
    bad = upward_imports(graph)
    assert not bad, "upward imports (importer -> imported):\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_cycles(runtime_graph):
    found = [c for c in cycles(runtime_graph) if c not in ALLOWED_CYCLES]
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(sorted(c)) for c in found)


def test_every_exception_is_still_needed(graph, runtime_graph):
    stale = [pair for pair in ALLOWED if pair[1] not in graph.get(pair[0], set())]
    stale_cycles = [c for c in ALLOWED_CYCLES if c not in cycles(runtime_graph)]
    assert not stale and not stale_cycles, f"remove from the allow-lists: {stale} {stale_cycles}"


def test_the_layers_are_checked_by_real_examples():
    """The rule itself: a downward import passes, an upward one and a sibling's are caught."""
    toy = {"jobs.service": {"sandbox.spark"}, "yushan.config": {"sandbox.spark"},
           "onboarding.ingest": {"jobs.service"}, "web.api": {"yushan.cli"}}
    assert upward_imports(toy) == [("onboarding.ingest", "jobs.service"),
                                   ("web.api", "yushan.cli"), ("yushan.config", "sandbox.spark")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
