"""The report's place in the layering, read from the source (no import is run): circuitlab/report/ and every
circuitlab module it imports at module level, transitively, import no torch, TransformerLens or Hydra (a report is
written from the run dir's files on a machine without them); report/ reaches a method only through the registry
(headline.method_record), and imports nothing that runs experiments or parses the command line."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import circuitlab

ROOT = Path(circuitlab.__file__).parent
HEAVY = ("torch", "transformer_lens", "hydra", "omegaconf")
ABOVE_THE_REPORT = ("circuitlab.cli", "circuitlab.run", "circuitlab.api", "circuitlab.hydra_app", "circuitlab.multirun", "circuitlab.plan",
                    "circuitlab.engine", "circuitlab.edges", "circuitlab.models", "circuitlab.tasks")


def module_path(name: str) -> Path | None:
    """The file of circuitlab module `name` (a package's __init__.py), or None."""
    if name == "circuitlab":
        return ROOT / "__init__.py"
    relative = Path(*name.split(".")[1:])
    for path in (ROOT / relative.with_suffix(".py"), ROOT / relative / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level: bool) -> set[str]:
    """The modules `path` imports: at module level only (not inside a function), or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = ast.walk(tree) if not module_level else (n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef)))
    out = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            if base.split(".")[0] == "circuitlab":  # `from circuitlab import tokens`: the module tokens
                out |= {f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}") is not None}
    return out


def report_files() -> list[Path]:
    return sorted((ROOT / "report").glob("*.py"))


def module_level_closure(paths: list[Path]) -> dict[str, str]:
    """Every module imported at module level from `paths`, transitively through circuitlab: {module: who imports it}."""
    seen: dict[str, str] = {}
    todo = [(module_name(p), p) for p in paths]
    done: set[Path] = set()
    while todo:
        name, path = todo.pop()
        if path in done:
            continue
        done.add(path)
        for imported in imports(path, module_level=True):
            seen.setdefault(imported, name)
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs before its module
                inner = module_path(".".join(parts[:i])) if parts[0] == "circuitlab" else None
                if inner is not None and inner not in done:
                    todo.append((".".join(parts[:i]), inner))
    return seen


def test_the_report_imports_no_torch_transformer_lens_or_hydra_at_module_level():
    closure = module_level_closure(report_files())
    heavy = {m: by for m, by in closure.items() if m.split(".")[0] in HEAVY}
    assert not heavy, heavy
    assert "jinja2" in closure and "circuitlab.headline" in closure  # (the walk sees what it should)


def test_the_report_reaches_methods_only_through_the_registry_and_nothing_above_it():
    for path in report_files():
        for imported in imports(path, module_level=False):
            assert not (imported.startswith("circuitlab.methods") and imported != "circuitlab.methods.registry"), (path.name, imported)
            assert not any(imported == above or imported.startswith(above + ".") for above in ABOVE_THE_REPORT), (path.name, imported)


def test_the_walk_sees_a_planted_violation(tmp_path, monkeypatch):
    """The rules above can fail: a module importing torch at module level two steps away is found."""
    fake = tmp_path / "circuitlab"
    (fake / "report").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "report" / "__init__.py").write_text("from circuitlab.report.view import shown\n")
    (fake / "report" / "view.py").write_text("import json\nfrom circuitlab import helper\n\ndef shown():\n    import torch\n")
    (fake / "helper.py").write_text("import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    closure = module_level_closure(report_files())
    assert closure.get("torch") == "circuitlab.helper" and "json" in closure
    assert "torch" in imports(fake / "report" / "view.py", module_level=False)
    assert "torch" not in imports(fake / "report" / "view.py", module_level=True)
