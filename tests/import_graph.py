"""circuitlab's imports read from the source with `ast` (nothing is imported), for tests/test_layering.py: every
module's imports with where they run (module level, inside a function, under `if TYPE_CHECKING:`), what importing
a module runs, and the circles of a graph."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


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
