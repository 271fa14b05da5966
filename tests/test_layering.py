"""The layering of circuitlab/ (docs/architecture.md), read from the source with `ast`: nothing is imported, so a rule
broken anywhere fails here even when no other test reaches that code. Every rule is a function of the package's
root dir, and each is shown to fail on a copy of the package with a violation planted in it.

An import counts wherever it is written: at module level, inside a function (a lazy import still makes the logical
dependency) and under `if TYPE_CHECKING:` (a type-only one too); only the torch-free rules, which are about what
runs when a module is imported, follow module-level imports alone. Importing `a.b.c` also runs the packages `a.b`
and `a` (their `__init__.py`): the walk and the circle search follow those too, except a package the importer is
itself inside (always initialised first) and the root package `circuitlab` (its `__init__` imports only errors;
its notebook functions import the API lazily, on call)."""

from __future__ import annotations

import ast
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "circuitlab"

# Every module has one place; a place may import the places listed for it (and itself). Bottom to top.
AREAS: dict[str, tuple[str, ...]] = {
    "foundation": ("circuitlab.errors", "circuitlab.checks", "circuitlab.config", "circuitlab.storage", "circuitlab.rundir",
                   "circuitlab.digests", "circuitlab.tokens", "circuitlab.threads", "circuitlab.devices", "circuitlab.memory",
                   "circuitlab.metrics", "circuitlab.locations", "circuitlab.circuits"),
    "tasks": ("circuitlab.tasks",),
    "models": ("circuitlab.models",),
    "engine": ("circuitlab.engine",),
    "drawing": ("circuitlab.plotting", "circuitlab.heatmaps"),
    "edges": ("circuitlab.edges",),
    "methods": ("circuitlab.methods",),
    "outputs": ("circuitlab.results", "circuitlab.figures", "circuitlab.headline", "circuitlab.report"),
    "orchestration": ("circuitlab.plan", "circuitlab.run", "circuitlab.resume", "circuitlab.merge", "circuitlab.inputs"),
    "entry": ("circuitlab", "circuitlab.cli", "circuitlab.compose", "circuitlab.hydra_app", "circuitlab.multirun", "circuitlab.api"),
}
MAY_IMPORT: dict[str, set[str]] = {
    "foundation": set(),
    "tasks": {"foundation"},
    "models": {"foundation", "tasks"},
    "engine": {"foundation", "tasks"},
    "drawing": {"foundation"},
    "edges": {"foundation", "tasks", "engine", "drawing"},
    "methods": {"foundation", "tasks", "models", "engine", "drawing", "edges"},
    "outputs": {"foundation", "drawing", "methods"},  # methods: the registry only (see `methods_reached_outside_the_registry`)
    "orchestration": {"foundation", "tasks", "models", "engine", "methods", "outputs"},
    "entry": set(AREAS),
}
# (importer, imported): an import against the table above, allowed for the reason given. Remove when fixed.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("circuitlab.engine.chunks", "circuitlab.results"):
        "TODO(issue 23, item 8): chunk tensors are written and read through results.write_tensors / load_tensors "
        "(lazily); they live in circuitlab/storage.py (foundation) now, and importing them from there removes this "
        "exception (engine/ is another engineer's; left to them)",
}
# (importer, imported): an import that closes a circle, allowed for the reason given. None today; keep it that way.
CIRCLE_EXCEPTIONS: dict[tuple[str, str], str] = {}
# a method folder that builds on another method's modules (the only imports between method folders)
BUILDS_ON: dict[str, set[str]] = {
    # attribution patching's exact patching beside its estimates is activation patching's sweep: it checks, plans
    # and shards as activation patching does (methods/attribution_patching/method.py)
    "attribution_patching": {"activation_patching"},
}
HEAVY = ("torch", "transformer_lens", "transformers")  # what a torch-free module may not run at import
NO_CONFIG_LIBRARIES = ("hydra", "omegaconf")  # the report reads plain files: not even Hydra's or OmegaConf's
# where `circuitlab figures` and `circuitlab report` start (`.*`: every module of the package): they, and what they
# import at module level, run without torch; circuitlab.methods is the registration list (the records, configs, figures)
TORCH_FREE = ("circuitlab.figures", "circuitlab.report.*", "circuitlab.headline", "circuitlab.results", "circuitlab.methods",
              "circuitlab.methods.registry", "circuitlab.plotting", "circuitlab.heatmaps")
FREE_OF_CONFIG_LIBRARIES = ("circuitlab.report.*",)
NO_TORCH_OF_THEIR_OWN = ("circuitlab.plan",)  # names no torch at module level itself (what it imports does: PromptPairs hold tensors)
ENGINES = ("circuitlab.engine", "circuitlab.edges")


@dataclass(frozen=True)
class Import:
    importer: str  # the module that imports
    target: str  # a circuitlab module as resolved (`from circuitlab import tokens` -> circuitlab.tokens), else the name
    line: int
    lazy: bool  # inside a function: runs when it is called
    type_only: bool  # under `if TYPE_CHECKING:`: never runs

    @property
    def runs_at_import(self) -> bool:
        return not self.lazy and not self.type_only


@dataclass(frozen=True)
class Package:
    root: Path
    files: dict[str, Path]  # module name -> file
    imports: tuple[Import, ...]
    strings: tuple[tuple[str, int, str], ...]  # (module, line, value) of every string constant
    trees: dict[str, ast.Module]

    def imports_of(self, module: str) -> list[Import]:
        if not hasattr(self, "_by_importer"):
            by_importer: dict[str, list[Import]] = {}
            for imp in self.imports:
                by_importer.setdefault(imp.importer, []).append(imp)
            object.__setattr__(self, "_by_importer", by_importer)
        return self._by_importer.get(module, [])

    def where(self, module: str, line: int | None = None) -> str:
        path = self.files[module].relative_to(self.root.parent)
        return f"{path}:{line}" if line else str(path)


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@lru_cache(maxsize=8)
def read_package(root: Path) -> Package:
    """Every module under `root` (a dir named circuitlab), its imports and its string constants."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in files.items()}
    imports: list[Import] = []
    strings: list[tuple[str, int, str]] = []
    for name, tree in trees.items():
        package = name if files[name].name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
            if isinstance(node, ast.Import):
                imports.extend(Import(name, alias.name, node.lineno, lazy, type_only) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                for alias in node.names:
                    whole = f"{base}.{alias.name}"
                    imports.append(Import(name, whole if whole in files else base, node.lineno, lazy, type_only))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append((name, node.lineno, node.value))
            if isinstance(node, ast.If) and _type_checking(node.test):
                for child in node.body:
                    visit(child, lazy, True)
                for child in node.orelse:
                    visit(child, lazy, type_only)
                return
            inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, inner, type_only)

        visit(tree, False, False)
    return Package(root, files, tuple(imports), tuple(strings), trees)


def resolve(package: Package, target: str) -> str | None:
    """The circuitlab module an import names (the longest prefix that is one), or None for an outside module."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in package.files:
            return ".".join(parts[:i])
    return None


def packages_run(importer: str, module: str) -> list[str]:
    """`module` and the packages above it that importing it runs, less the root and those `importer` is inside."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1) if not within(importer, ".".join(parts[:i]))] or [module]


def area_of(module: str) -> str | None:
    best = max(((len(prefix), area) for area, prefixes in AREAS.items() for prefix in prefixes
                if module == prefix or (prefix != "circuitlab" and within(module, prefix))), default=None)
    return best[1] if best else None


# the rules: each returns what breaks it, one line per violation ------------------------------------------------------


def unplaced_modules(root: Path) -> list[str]:
    """Every module has a place in AREAS (a new module: give it one here and in docs/architecture.md)."""
    package = read_package(root)
    return [f"{package.where(m)}: {m} has no place in the layering (AREAS)" for m in package.files if area_of(m) is None]


def imports_against_the_layers(root: Path) -> list[str]:
    """A module imports only modules of its own place or of the places below it that MAY_IMPORT lists."""
    package = read_package(root)
    out = []
    for imp in package.imports:
        target = resolve(package, imp.target)
        here, there = area_of(imp.importer), area_of(target) if target else None
        if target is None or here is None or there is None or there == here or there in MAY_IMPORT[here]:
            continue
        if (imp.importer, target) not in LAYER_EXCEPTIONS:
            out.append(f"{package.where(imp.importer, imp.line)}: {here} imports {there} ({target}{', lazily' if imp.lazy else ''})")
    return out


def import_circles(root: Path) -> list[str]:
    """No import circle, counting lazy and type-only imports and the packages an import runs."""
    package = read_package(root)
    graph: dict[str, dict[str, int]] = {m: {} for m in package.files}
    for imp in package.imports:
        target = resolve(package, imp.target)
        if target is None or target == imp.importer:
            continue
        for module in packages_run(imp.importer, target):
            if (imp.importer, module) not in CIRCLE_EXCEPTIONS and module != imp.importer:
                graph[imp.importer].setdefault(module, imp.line)
    out = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        steps = " -> ".join(f"{a} ({package.where(a, graph[a][b])})" for a, b in zip(cycle, cycle[1:]))
        out.append(f"import circle among {', '.join(component)}: {steps} -> {cycle[-1]}")
    return out


def methods_imported_by_engines(root: Path) -> list[str]:
    """engine/ and edges/ import no method and not the registry, anywhere, nor run one at import (transitively)."""
    package = read_package(root)
    out = []
    for imp in package.imports:
        target = resolve(package, imp.target)
        if target and any(within(imp.importer, e) for e in ENGINES) and within(target, "circuitlab.methods"):
            out.append(f"{package.where(imp.importer, imp.line)}: {imp.importer} imports {target}")
    for module in package.files:
        if any(within(module, e) for e in ENGINES):
            reached = module_level_closure(package, [module])
            out += [f"{package.where(module)}: importing {module} runs {m} (through {by})" for m, by in reached.items()
                    if within(m, "circuitlab.methods") and not within(by, "circuitlab.methods")]  # where it enters methods/
    return out


def heavy_imports_at_module_level(root: Path) -> list[str]:
    """What `circuitlab figures` / `report` import at module level, transitively, runs no torch / TransformerLens (the
    report no Hydra or OmegaConf either); plan.py names no torch at module level itself."""
    package = read_package(root)
    out = []
    for start, banned in [*((s, HEAVY) for s in TORCH_FREE), *((s, HEAVY + NO_CONFIG_LIBRARIES) for s in FREE_OF_CONFIG_LIBRARIES)]:
        starts = [m for m in package.files if within(m, start[:-2])] if start.endswith(".*") else [start]
        for first in starts:
            for module, by in module_level_closure(package, [first]).items():
                if module.split(".")[0] in banned:
                    out.append(f"{first}: importing it runs {module} (imported by {by}, {package.where(by)})")
    for module in NO_TORCH_OF_THEIR_OWN:
        out += [f"{package.where(module, imp.line)}: {module} imports {imp.target} at module level" for imp in package.imports
                if imp.importer == module and imp.runs_at_import and imp.target.split(".")[0] in HEAVY]
    return sorted(set(out))


def methods_reached_outside_the_registry(root: Path) -> list[str]:
    """Outside circuitlab/methods/ a method is reached only through the registry (circuitlab.methods.registry, and the
    package that fills it); a method folder imports no other method's (BUILDS_ON aside); no module names another
    method's module in a string (importlib), and a registry record names a module of its own folder."""
    package = read_package(root)
    out = []

    def folder(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[:2] == ["circuitlab", "methods"] and parts[2] != "registry" else None

    for imp in package.imports:
        target = resolve(package, imp.target)
        if target is None or folder(target) is None:
            continue
        mine = folder(imp.importer)
        if imp.importer == "circuitlab.methods" and target.count(".") == 2:  # the registration list: the method packages
            continue
        if mine != folder(target) and folder(target) not in BUILDS_ON.get(mine or "", set()):
            out.append(f"{package.where(imp.importer, imp.line)}: {imp.importer} imports {target} (not through the registry)")
    for module, line, value in package.strings:
        named = folder(value) if value.startswith("circuitlab.methods.") else None
        if named is not None and named != folder(module) and named not in BUILDS_ON.get(folder(module) or "", set()):
            out.append(f"{package.where(module, line)}: {module} names the module {value!r} (not through the registry)")
    return out


def method_name_branches(root: Path) -> list[str]:
    """Outside circuitlab/methods/, no code decides by a method's name: no comparison or membership test with a
    method's name, no dict keyed by one, no `case "name":` (a method's differences live in its registry record)."""
    package = read_package(root)
    names = {p.parent.name for p in (root / "methods").glob("*/__init__.py")}
    out = []

    def named(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and node.value in names:
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [n for e in node.elts for n in named(e)]
        return []

    for module, tree in package.trees.items():
        if within(module, "circuitlab.methods"):
            continue
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Compare):
                found = [n for operand in (node.left, *node.comparators) for n in named(operand)]
            elif isinstance(node, ast.Dict):
                found = [n for key in node.keys if key is not None for n in named(key)]
            elif isinstance(node, ast.MatchValue):
                found = named(node.value)
            out += [f"{package.where(module, node.lineno)}: {module} branches on the method name {n!r}" for n in found]
    return out


RULES: dict[str, Callable[[Path], list[str]]] = {
    "every module has a place": unplaced_modules,
    "imports go down the layers": imports_against_the_layers,
    "no import circle": import_circles,
    "engine/ and edges/ import no method": methods_imported_by_engines,
    "figures and report run no torch, plan names none": heavy_imports_at_module_level,
    "a method is reached only through the registry": methods_reached_outside_the_registry,
    "no method-name branch outside methods/": method_name_branches,
}


# graph helpers -------------------------------------------------------------------------------------------------------


def module_level_closure(package: Package, starts: list[str]) -> dict[str, str]:
    """Every module that importing `starts` runs (circuitlab's and outside ones), with the module that imports it."""
    seen: dict[str, str] = {}
    todo, done = list(starts), set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        for imp in package.imports_of(module):
            if not imp.runs_at_import:
                continue
            target = resolve(package, imp.target)
            if target is None:
                seen.setdefault(imp.target, module)
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the packages above it run first
                inner = ".".join(parts[:i])
                seen.setdefault(inner, module)
                todo.append(inner)
    return seen


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One shortest circle through the component's first module: [a, b, ..., a]."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")


# the tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_the_layering_holds(rule):
    broken = RULES[rule](ROOT)
    assert not broken, f"{rule}:\n" + "\n".join(broken)


def test_the_walk_sees_what_it_should():
    """The reader is not blind: known imports are found, with the right kind."""
    package = read_package(ROOT)
    found = {(i.importer, resolve(package, i.target) or i.target, i.lazy) for i in package.imports}
    assert ("circuitlab.run", "circuitlab.plan", False) in found  # from circuitlab.plan import ... at module level
    assert ("circuitlab.plan", "torch", True) in found  # check_device's own import
    assert ("circuitlab.compose", "circuitlab.methods.registry", True) in found  # register_configs
    assert ("circuitlab.methods", "circuitlab.methods.das", False) in found  # `from circuitlab.methods import das`
    closure = module_level_closure(package, ["circuitlab.figures"])
    assert "circuitlab.methods.das.figures" in closure and "plotnine" in closure and "torch" not in closure
    assert "circuitlab.methods.das.method" not in closure  # a method's logic is imported when a run needs it
    report = module_level_closure(package, ["circuitlab.report"])
    assert "jinja2" in report and "circuitlab.headline" in report and "circuitlab.report.page" in report
    assert {"das", "eap", "path_patching"} <= {p.parent.name for p in (ROOT / "methods").glob("*/__init__.py")}
    assert set(AREAS) == set(MAY_IMPORT) and all(area in AREAS for allowed in MAY_IMPORT.values() for area in allowed)


def test_the_exceptions_are_still_needed():
    """An exception that no import needs any more is removed from the list (so the list says what is left)."""
    package = read_package(ROOT)
    edges = {(i.importer, resolve(package, i.target)) for i in package.imports}
    assert not [e for e in LAYER_EXCEPTIONS if e not in edges], "remove the fixed LAYER_EXCEPTIONS"
    assert not [e for e in CIRCLE_EXCEPTIONS if e not in edges], "remove the fixed CIRCLE_EXCEPTIONS"


def plant(tmp_path: Path, additions: dict[str, str]) -> Path:
    """A copy of the package's Python files with `additions` appended to (or making) the named files."""
    copy = tmp_path / "circuitlab"
    for path in ROOT.rglob("*.py"):
        target = copy / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for relative, code in additions.items():
        target = copy / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((target.read_text() if target.exists() else "") + "\n" + code + "\n")
    return copy


LAZY = "def _planted():\n    {}\n"
PLANTED = [
    ("every module has a place", {"newcomer.py": "import json"}, "circuitlab.newcomer has no place"),
    ("imports go down the layers", {"engine/forward.py": LAZY.format("from circuitlab.run import run_experiment")},
     "engine imports orchestration (circuitlab.run, lazily)"),
    ("imports go down the layers", {"report/values.py": "from circuitlab.engine import rows"}, "outputs imports engine"),
    ("imports go down the layers", {"tasks/base.py": LAZY.format("from circuitlab.models import loading")}, "tasks imports models"),
    ("no import circle", {"tasks/base.py": LAZY.format("from circuitlab.models import toy")},
     "circuitlab.models.toy (circuitlab/models/toy.py:"),
    # the circle config.register_configs made: config -> the methods package -> each method's config -> config
    ("no import circle", {"config.py": LAZY.format("from circuitlab.methods import registry")}, "circuitlab.config (circuitlab/config.py:"),
    ("no import circle", {"methods/das/saved.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from circuitlab.methods.das.compute import DASResult"},
     "circuitlab.methods.das.saved"),
    ("engine/ and edges/ import no method", {"edges/graph.py": LAZY.format("from circuitlab.methods.registry import get")},
     "circuitlab.edges.graph imports circuitlab.methods.registry"),
    ("engine/ and edges/ import no method", {"helper.py": "from circuitlab.methods import registry", "engine/forward.py": "from circuitlab import helper"},
     "importing circuitlab.engine.forward runs circuitlab.methods.registry (through circuitlab.helper)"),
    ("engine/ and edges/ import no method", {"engine/batching.py": "import circuitlab.methods"}, "circuitlab.engine.batching imports circuitlab.methods"),
    ("figures and report run no torch, plan names none", {"tokens.py": "import torch"}, "runs torch (imported by circuitlab.tokens"),
    ("figures and report run no torch, plan names none", {"report/values.py": "from omegaconf import OmegaConf"}, "runs omegaconf"),
    ("figures and report run no torch, plan names none", {"methods/das/config.py": "import transformer_lens"}, "runs transformer_lens"),
    ("figures and report run no torch, plan names none", {"plan.py": "import torch"}, "circuitlab.plan imports torch at module level"),
    ("a method is reached only through the registry", {"report/page.py": LAZY.format("from circuitlab.methods.das import figures")},
     "circuitlab.report.page imports circuitlab.methods.das.figures"),
    ("a method is reached only through the registry", {"methods/das/method.py": "from circuitlab.methods.path_patching import receivers"},
     "circuitlab.methods.das.method imports circuitlab.methods.path_patching.receivers"),
    ("a method is reached only through the registry", {"run.py": LAZY.format("__import__('importlib').import_module('circuitlab.methods.das.method')")},
     "names the module 'circuitlab.methods.das.method'"),
    ("no method-name branch outside methods/", {"run.py": LAZY.format("return cfg.method.name == 'das'")}, "branches on the method name 'das'"),
    ("no method-name branch outside methods/", {"inputs.py": LAZY.format("return name in ('eap', 'eap_ig')")}, "branches on the method name 'eap_ig'"),
    ("no method-name branch outside methods/", {"edges/method.py": LAZY.format("return {'edge_patching': 1}")}, "branches on the method name 'edge_patching'"),
]


@pytest.mark.parametrize("rule, additions, expected", PLANTED, ids=[f"{rule}: {next(iter(a))}" for rule, a, _ in PLANTED])
def test_each_rule_finds_a_planted_violation(tmp_path, rule, additions, expected):
    broken = RULES[rule](plant(tmp_path / "planted", additions))
    assert any(expected in line for line in broken), broken
