"""The documentation holds together: the config reference equals what the schemas give, the mkdocs site builds in
strict mode (a broken link, a missing anchor, a page outside the navigation fail it), every relative link of the
README reaches a file (and a heading, where it names one), and the configuration page lists every shipped option."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_reference_is_generated_from_the_schemas():
    reference = load_script("config_reference")
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == reference.render(), (
        f"docs/config-reference.md is out of date with the config schemas / shipped YAML; regenerate it: {reference.REGENERATE}")


def test_config_reference_covers_every_schema_field():
    """Every field of every registered schema (each method's included) has a row, with some help."""
    import dataclasses

    reference = load_script("config_reference")
    text = (ROOT / "docs" / "config-reference.md").read_text()
    schemas = reference.registered_schemas()
    from circuitlab.methods import registry

    assert {f"method/base_{name}" for name in registry.METHODS} <= set(schemas)
    for key, schema in schemas.items():
        group = key.split("/")[0] if "/" in key else None
        for field in dataclasses.fields(schema):
            if group is None and field.name in reference.GROUPS:
                continue
            assert f"| `{field.name}` |" in text or f"| `run.{field.name}` |" in text or field.name == "run", (key, field.name)
    rows = [line for line in text.splitlines() if re.match(r"\| `[\w.]+` \| [^|]+ \| ", line) and line.count(" | ") >= 3]
    blank = [row.split(" | ")[0] for row in rows if row.rstrip().endswith("|  |")]
    assert not blank, f"schema fields with no help (add a `field`: docstring segment or a YAML comment): {blank}"


def test_config_reference_script_check_mode(tmp_path):
    stale = tmp_path / "config-reference.md"
    stale.write_text("# old\n")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check", "--out", str(stale)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "regenerate it: python scripts/config_reference.py" in run.stderr


def test_mkdocs_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]' or '.[test]')")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                          "--site-dir", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "config-reference.html").is_file()


def headings_slugs(markdown_file: Path) -> set[str]:
    """The anchors Python-Markdown's toc (mkdocs) and GitHub give the file's headings (both: lower case, punctuation
    dropped, spaces to dashes; they agree on the headings these docs use)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", markdown_file.read_text(), flags=re.S)
    return {slugify(m.group(1).strip(), "-") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.M)}


def relative_links(markdown_file: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown_file.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [link for link in links if not re.match(r"^[a-z]+:", link)]


def test_readme_links_resolve():
    readme = ROOT / "README.md"
    links = relative_links(readme)
    assert links, "the README links to no page"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (readme.parent / path) if path else readme
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT)})")
        elif anchor and target.suffix == ".md" and anchor not in headings_slugs(target):
            broken.append(f"{link} (no heading #{anchor} in {target.relative_to(ROOT)})")
    assert not broken, "README links that do not resolve: " + "; ".join(broken)


def test_readme_links_every_docs_page():
    """The README's map of the docs names every page of the site."""
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(ROOT / "README.md")}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md")}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs pages the README's map does not link: {missing}"


def test_configuration_page_lists_every_shipped_option():
    from circuitlab.compose import group_options, launcher_options

    text = (ROOT / "docs" / "configuration.md").read_text()
    table, group = {}, None
    for line in text.splitlines():
        match = re.match(r"^\| (`([\w/]+)/`)? *\| (.*?) \|", line)
        if match:
            group = match.group(2) or group
            table.setdefault(group, set()).update(re.findall(r"`([\w-]+)`", match.group(3)))
    expected = {group: set(group_options(group)) for group in ("model", "task", "method", "sweep", "experiment")}
    expected["hydra/launcher"] = set(launcher_options())
    for group, options in expected.items():
        missing = options - table.get(group, set())
        assert not missing, f"docs/configuration.md's table lacks {group} options {sorted(missing)}"
