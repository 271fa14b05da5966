"""The layering of circuitlab/ (docs/architecture.md), read from the source with `ast` (tests/import_graph.py): nothing
is imported, so a rule broken anywhere fails here even when no other test reaches that code. Every rule is a function of the package's
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
from pathlib import Path

import pytest

from tests.import_graph import module_level_closure, packages_run, read_package, resolve, shortest_cycle, strongly_connected, within

ROOT = Path(__file__).resolve().parents[1] / "circuitlab"

# Every module has one place; a place may import the places listed for it (and itself). Bottom to top.
AREAS: dict[str, tuple[str, ...]] = {
    "foundation": ("circuitlab.errors", "circuitlab.checks", "circuitlab.config", "circuitlab.storage", "circuitlab.rundir", "circuitlab.runfiles",
                   "circuitlab.digests", "circuitlab.tokens", "circuitlab.threads", "circuitlab.devices", "circuitlab.memory",
                   "circuitlab.metrics", "circuitlab.locations", "circuitlab.circuits"),
    "tasks": ("circuitlab.tasks",),
    "models": ("circuitlab.models",),
    "engine": ("circuitlab.engine",),
    "drawing": ("circuitlab.plotting", "circuitlab.heatmaps"),
    "edges": ("circuitlab.edges",),
    "methods": ("circuitlab.methods",),
    "outputs": ("circuitlab.results", "circuitlab.figures", "circuitlab.headline", "circuitlab.report"),
    "orchestration": ("circuitlab.plan", "circuitlab.run", "circuitlab.resume", "circuitlab.merge", "circuitlab.inputs",
                      "circuitlab.cost"),
    "entry": ("circuitlab", "circuitlab.cli", "circuitlab.compose", "circuitlab.hydra_app", "circuitlab.multirun", "circuitlab.api",
              "circuitlab.slurm", "circuitlab.slurm_launch", "circuitlab.status", "circuitlab.plan_command"),
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
# (importer, imported): an import against the table above, allowed for the reason given. None today; remove when fixed.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}
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
