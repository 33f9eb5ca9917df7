"""The architecture as rules a change cannot quietly break: no import cycle, the layers
of harness/ (each package imports only those below it), what stays importable without
the third-party packages, and the size and assert rules of the project style.

Pure and fast: harness/ is read with ast, and the import checks run in fresh
interpreters; nothing starts QEMU or touches the network.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "harness"

# The modules of harness/ itself; each may import only floor modules.
FLOOR = frozenset({"harness", "harness.__main__", "harness.atomic", "harness.cache",
                   "harness.config", "harness.errors", "harness.proc", "harness.record",
                   "harness.vocabulary"})
# The packages from the bottom up: each may import the floor and the packages before it.
PACKAGES = ("probes", "guest", "host", "qemu", "analysis", "report", "run", "campaign",
            "testing", "cli")
# The two floor modules that reach up, each to exactly one module: a short import
# path for Config (the plugin README's), and `python -m harness` as the CLI.
REACHING_UP = frozenset({("harness.config", "harness.run.config"),
                         ("harness.__main__", "harness.cli.main")})
# The design card's modules: the public faces of packages, for users of tapmig as a
# library. Each stands at the layer of the package it fronts (it may import that package
# and those below it) and only re-exports; harness's own code imports the packages.
FACES = {"harness.vm": "qemu", "harness.netns": "host", "harness.ping": "analysis"}
THIRD_PARTY = ("pyroute2", "qemu.qmp", "requests")
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(HARNESS.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), filename=str(path))


def rel(name: str) -> str:
    return str(modules()[name].relative_to(REPO))


def absolute(importer: str, node: ast.ImportFrom) -> str:
    """The module a `from X import ...` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if modules()[importer].name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def is_harness(name: str) -> bool:
    return name == "harness" or name.startswith("harness.")


def harness_imports(module: ast.Module, importer: str) -> dict[str, int]:
    """Every harness module the module imports, anywhere in it (a function-level
    import counts: it runs, just later), with the line of the first such import.
    `from harness.pkg import mod` is the module harness.pkg.mod when that is a module."""
    found: dict[str, int] = {}
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if is_harness(alias.name)]
        elif isinstance(node, ast.ImportFrom) and is_harness(base := absolute(importer, node)):
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base
                     for a in node.names]
        else:
            continue
        for name in names:
            if name != importer:
                found[name] = min(found.get(name, node.lineno), node.lineno)
    return found


@cache
def imports(importer: str) -> dict[str, int]:
    return harness_imports(tree(importer), importer)


def layer(name: str) -> int | None:
    """0 for the floor, 1 + the package's place in PACKAGES; None for a module that
    has no place (a new top-level module or package the layering must be told of)."""
    if name in FLOOR:
        return 0
    if name in FACES:
        return 1 + PACKAGES.index(FACES[name])
    parts = name.split(".")
    if len(parts) >= 2 and parts[1] in PACKAGES:
        return 1 + PACKAGES.index(parts[1])
    return None


# --- (a) no import cycle --------------------------------------------------------------


def cycles() -> list[list[str]]:
    """Every strongly connected component of more than one module, as one cycle
    through it (Tarjan, then a walk inside the component)."""
    graph = {name: sorted(n for n in imports(name) if n in modules()) for name in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            components.append([v, *component])

    for v in graph:
        if v not in index:
            visit(v)
    return [walk(graph, set(c)) for c in components if len(c) > 1]


def walk(graph: dict[str, list[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module, inside the component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    for v in queue:  # breadth first: the queue grows as it is read
        for w in graph[v]:
            if w == start:
                return [*paths[v], start]
            if w in component and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_imports_are_found_everywhere_and_resolved_to_modules() -> None:
    source = ("import os\n"
              "from harness.probes import base, driver as d\n"
              "def later() -> None:\n"
              "    import harness.qemu.vm\n"
              "    from harness.errors import UsageError\n"
              "from . import icmp\n"
              "from .tcp import MSG\n")
    found = harness_imports(ast.parse(source), "harness.probes.flow")
    assert found == {"harness.probes.base": 2, "harness.probes.driver": 2,
                     "harness.qemu.vm": 4, "harness.errors": 5, "harness.probes.icmp": 6,
                     "harness.probes.tcp": 7}


def named(cycle: list[str]) -> str:
    """a (path:line of its import of b) -> b (...) -> ... -> a"""
    edges = (f"{a} ({rel(a)}:{imports(a)[b]})" for a, b in itertools.pairwise(cycle))
    return " -> ".join([*edges, cycle[-1]])


def test_no_import_cycle_among_harness_modules() -> None:
    # Every import counts, a function's or one under `if TYPE_CHECKING:` too: each is
    # a dependency, whether it runs at import time, later, or only for the type checker.
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(named(c) for c in found)


def test_the_cycle_finder_names_the_cycle() -> None:
    graph = {"a": ["b", "d"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert walk(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]


# --- (b) the layers ---------------------------------------------------------------------


def layering_violations() -> list[str]:
    wrong: list[str] = []
    for importer in modules():
        mine = layer(importer)
        if mine is None:
            wrong.append(f"{rel(importer)}: {importer} has no layer (FLOOR or PACKAGES "
                         "in tests/test_architecture.py)")
            continue
        package = ["harness", FACES[importer]] if importer in FACES else importer.split(".")[:2]
        for name, line in sorted(imports(importer).items()):
            theirs = layer(name)
            same_package = mine > 0 and name.split(".")[:2] == package
            if (importer, name) in REACHING_UP or same_package:
                continue
            if theirs is None or (theirs != 0 if mine == 0 else theirs >= mine):
                where = "the floor" if mine == 0 else f"harness.{PACKAGES[mine - 1]}"
                wrong.append(f"{rel(importer)}:{line}: {where} imports {name}")
    return wrong


def test_each_package_imports_only_packages_below_it() -> None:
    wrong = layering_violations()
    assert not wrong, ("imports against the layering (floor < "
                       + " < ".join(PACKAGES) + "):\n" + "\n".join(wrong))


def test_each_package_says_what_it_may_import() -> None:
    missing = []
    for package in PACKAGES:
        name = f"harness.{package}"
        doc = ast.get_docstring(tree(name)) or ""
        if not any(line.startswith("May import:") for line in doc.splitlines()):
            missing.append(rel(name))
    assert not missing, f"no 'May import:' line in the docstring of {', '.join(missing)}"


def test_nothing_in_harness_imports_a_face() -> None:
    found = [f"{rel(importer)}:{line}: imports {name}" for importer in modules()
             for name, line in sorted(imports(importer).items()) if name in FACES]
    assert not found, ("a face is for users; import the package it fronts:\n"
                       + "\n".join(found))


def exposed(doc: str) -> list[str]:
    """The names of a docstring's "Exposes:" paragraph (it may wrap)."""
    lines = doc.split("Exposes:", 1)[1].split("\n\n", 1)[0]
    return [name.strip() for name in lines.replace("\n", " ").split(",")]


@pytest.mark.parametrize("face", sorted(FACES))
def test_each_face_imports_and_exposes_what_its_docstring_says(face: str) -> None:
    code = ("import importlib, json, sys\n"
            "m = importlib.import_module(sys.argv[1])\n"
            "print(json.dumps({'all': m.__all__, 'doc': m.__doc__,\n"
            "                  'missing': [n for n in m.__all__ if not hasattr(m, n)]}))")
    done = python(code, face)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert "Exposes:" in found["doc"], f"{rel(face)}: no 'Exposes:' line in its docstring"
    assert sorted(exposed(found["doc"])) == sorted(found["all"])
    assert not found["missing"], f"{rel(face)}: __all__ names what it lacks"
    # Only re-exports: the docstring, imports and __all__, nothing of its own.
    own = [node.lineno for node in tree(face).body[1:]
           if not isinstance(node, ast.Import | ast.ImportFrom)
           and not (isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__")]
    assert not own, f"{rel(face)} defines something at lines {own}; it only re-exports"


# --- (c), (d) what imports without the third-party packages ------------------------------


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """code in a fresh interpreter of this venv, importing this checkout."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_harness_config_loads_no_third_party_package() -> None:
    code = ("import sys, json; import harness.config; "
            "print(json.dumps(sorted(sys.modules)))")
    done = python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)
    heavy = [m for m in loaded if any(m == t or m.startswith(t + ".") for t in THIRD_PARTY)]
    assert not heavy, f"import harness.config loads {heavy}"


# A finder first on sys.meta_path that refuses the third-party packages, as a bare
# interpreter (ci/build-qemu without a venv, a prober in a namespace) would.
BLOCK = """
import importlib.abc, sys
BLOCKED = ("pyroute2", "qemu", "requests")
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
        return None
sys.meta_path.insert(0, Blocked())
try:
    import requests
except ImportError:
    pass
else:
    sys.exit("the blocker let requests through")
"""
STDLIB_ONLY = ("harness.qemu.build", "harness.qemu.source", "harness.qemu.tree",
               "harness.qemu.variants", "harness.probes.base",
               "harness.probes.icmp", "harness.probes.flow", "harness.probes.tcp")
PROBERS = frozenset({"harness", "harness.probes", "harness.probes.base",
                     "harness.probes.icmp", "harness.probes.flow", "harness.probes.tcp"})


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_imports_with_the_third_party_packages_blocked(module: str) -> None:
    code = BLOCK + ("import importlib, json\n"
                    "importlib.import_module(sys.argv[1])\n"
                    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('harness'))))")
    done = python(code, module)
    assert done.returncode == 0, done.stderr[-2000:]
    if module.startswith("harness.probes."):
        # A prober starts in a bare interpreter in the namespace: only the probers'
        # own modules, not the host's side (harness.probes.driver) nor the floor.
        extra = sorted(set(json.loads(done.stdout)) - PROBERS)
        assert not extra, f"{module} loads {extra}"


def test_build_runs_with_the_third_party_packages_blocked() -> None:
    code = BLOCK + ("import runpy\n"
                    "sys.argv = ['harness.qemu.build', '--help']\n"
                    "runpy.run_module('harness.qemu.build', run_name='__main__', "
                    "alter_sys=True)")
    done = python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


# --- (e) the style rules ---------------------------------------------------------------


def test_no_assert_in_harness() -> None:
    found = [f"{rel(name)}:{node.lineno}" for name in modules()
             for node in ast.walk(tree(name)) if isinstance(node, ast.Assert)]
    assert not found, ("assert in harness/ (an error class from harness/errors.py "
                       "instead; asserts vanish under -O):\n" + "\n".join(found))


def test_no_function_over_50_lines() -> None:
    found = []
    for name in modules():
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel(name)}:{node.lineno}: {node.name} ({length} lines)")
    assert not found, (f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(found))


def test_no_module_over_400_lines() -> None:
    found = []
    for name, path in modules().items():
        length = len(path.read_text().splitlines())
        if length > MAX_MODULE_LINES:
            found.append(f"{rel(name)}:1: {length} lines")
    assert not found, (f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(found))


# -- the hop's one driver, and who changes a Lab -------------------------------------------

# The functions that make a hop happen; only the session calls them.
HOP_STEPS = frozenset({"observe", "on_target"})
LAB_STATE = frozenset({"source", "target", "host_tap", "migrations", "queue_baseline", "cfg",
                       "observers", "qemus"})


def python_files() -> dict[str, ast.Module]:
    """harness/ and tests/, by path relative to the repo."""
    paths = [*HARNESS.rglob("*.py"), *(REPO / "tests").rglob("*.py"), REPO / "conftest.py"]
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in paths}


def calls_of(module: ast.Module, names: frozenset[str]) -> list[int]:
    """Lines that call steps.NAME(...) for one of the names."""
    return [n.lineno for n in ast.walk(module)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in names and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "steps"]


def test_one_place_drives_a_hop() -> None:
    """run, chains, benches and the suite's shared guests all hop through the Session."""
    drivers = {path for path, module in python_files().items()
               if calls_of(module, HOP_STEPS)}
    assert drivers == {"harness/run/session.py"}


def lab_writes(module: ast.Module) -> list[str]:
    """`x.ATTR = ...` (or +=) for a Lab's state, outside a class's own `self`."""
    found = []
    for node in ast.walk(module):
        targets = (node.targets if isinstance(node, ast.Assign) else
                   [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else [])
        for t in targets:
            for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (isinstance(el, ast.Attribute) and el.attr in LAB_STATE
                        and not (isinstance(el.value, ast.Name) and el.value.id == "self")):
                    found.append(f"{ast.unparse(el)} (line {el.lineno})")
    return found


def test_nothing_outside_run_changes_a_lab() -> None:
    """Only harness.run's steps and session change who serves, which TAP holds the host's
    address and what the guest's queues count from; tests and other packages read."""
    outside = {path: writes for path, module in python_files().items()
               if not path.startswith("harness/run/") and (writes := lab_writes(module))}
    assert outside == {}


def test_the_lab_write_finder_finds_writes() -> None:
    module = ast.parse("lab.source, lab.target = a, None\nm.migrations += 1\nself.cfg = c\n")
    assert lab_writes(module) == ["lab.source (line 1)", "lab.target (line 1)",
                                  "m.migrations (line 2)"]
