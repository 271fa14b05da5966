"""Write docs/config-reference.md from the config schemas, so the reference cannot drift from the code.

    python scripts/config_reference.py            # (re)write docs/config-reference.md
    python scripts/config_reference.py --check    # exit 1 when the committed file differs (what tests/test_docs.py checks)

What it reads: the dataclasses `circuitlab.compose.register_configs` stores in Hydra's ConfigStore (the run-level
`RunConfig`, each group's `base_*` schema, each registered method's schema), the shipped YAML options of every group
(`circuitlab/configs/<group>/*.yaml`: the values an option sets, its header comment, a key's trailing `# comment`)
and the experiment presets. A field's help is, first found: its `metadata={"help": ...}`, its segment of the class
docstring (the convention "`field`: what it is"), the trailing comment of its line in the schema's source, the
trailing comment of its key in an option's YAML. The output depends on nothing else (sorted, no dates, no paths of
this machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import inspect
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "config-reference.md"
GROUPS = ("model", "task", "method", "sweep")  # the schema-backed groups, in the order they are written
REGENERATE = "python scripts/config_reference.py (or make docs-reference)"


# --- the schemas and the shipped YAML --------------------------------------------------------------------------------

def registered_schemas() -> dict[str, type]:
    """`group/base_name` (or `base_config`) -> the dataclass register_configs stored under it."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from circuitlab.compose import register_configs

    register_configs()
    schemas: dict[str, type] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            elif key.startswith("base_"):
                schemas[prefix + key.removesuffix(".yaml")] = OmegaConf.get_type(value.node)

    walk(ConfigStore.instance().repo, "")
    return schemas


def read_yaml(path: Path) -> tuple[dict, list[str], str]:
    """(the values it sets, its defaults list as strings, its header comment as one paragraph)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    defaults = [d if isinstance(d, str) else ", ".join(f"{k}: {v}" for k, v in d.items()) for d in data.pop("defaults", [])]
    data.pop("hydra", None)
    return data, defaults, header_comment(path)


def header_comment(path: Path) -> str:
    """The comment lines before the first key, as one paragraph (`# @package` and example command lines left out)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if text.startswith(("@package", "circuitlab ", "python ", "bash ")):
            continue
        words.append(text)
    return " ".join(w for w in words if w)


def header_commands(path: Path) -> list[str]:
    """The example command lines of the header comment."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line[1:].strip().startswith("circuitlab "):
            commands.append(line[1:].strip())
    return commands


def yaml_comments(path: Path) -> dict[str, str]:
    """`key` (dotted for nested keys) -> the trailing `# comment` of its line."""
    comments, stack = {}, []
    for line in path.read_text().splitlines():
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        comment = re.search(r"\s#\s?(.*)$", rest)
        if comment:
            comments[".".join(k for _, k in stack)] = comment.group(1).strip()
    return comments


# --- help, types and values ------------------------------------------------------------------------------------------

def docstring_help(schema: type) -> dict[str, str]:
    """`field` -> its segment of the docstrings of the schema and its bases: the convention "`field`: text" (or
    "`a` / `b`: text" for several), the text running to the next such mark or the end of its sentence."""
    names = {f.name for f in dataclasses.fields(schema)}
    found: dict[str, str] = {}
    for cls in schema.__mro__:
        doc = " ".join((cls.__dict__.get("__doc__") or "").split())
        if not doc or cls is object:
            continue
        marks = []
        for match in re.finditer(r"`(\w+)`((?: / `\w+`)*)( \([^)]*\))?:", doc):
            fields = [match.group(1), *re.findall(r"`(\w+)`", match.group(2))]
            if all(name in names for name in fields):
                marks.append((match.start(), match.end(), fields, (match.group(3) or "").strip()))
        for i, (_, end, fields, qualifier) in enumerate(marks):
            stop = marks[i + 1][0] if i + 1 < len(marks) else len(doc)
            text = first_sentence(doc[end:stop]).strip().rstrip(";").strip()
            text = f"{qualifier} {text}".strip() if not qualifier.startswith("(where") else text
            for name in fields:
                found.setdefault(name, text)
    return found


def first_sentence(text: str) -> str:
    """Up to the first full stop outside parentheses that ends a sentence (not "e.g."), or to the parenthesis that
    closes one the text started inside."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return text[:i]
        if char == "." and depth <= 0 and (i + 1 == len(text) or text[i + 1] == " ") \
                and not re.search(r"\b(e\.g|i\.e|cf|etc)$", text[:i]):
            return text[:i]
    return text


def mentions(schema: type) -> dict[str, str]:
    """`field` -> the first sentence of the schema's docstrings that names it in backticks (the last resort)."""
    found: dict[str, str] = {}
    for cls in schema.__mro__:
        doc = " ".join((cls.__dict__.get("__doc__") or "").split())
        for sentence in re.split(r"(?<=[.;])\s+", doc):
            for name in re.findall(r"`(\w+)`", sentence):
                found.setdefault(name, sentence.rstrip(".;"))
    return found


def source_comments(schema: type) -> dict[str, str]:
    """`field` -> the trailing comment of its line in the schema's source (any class in its MRO)."""
    found: dict[str, str] = {}
    for cls in schema.__mro__:
        if cls is object or not dataclasses.is_dataclass(cls):
            continue
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"^\s+(\w+):[^#]*#\s?(.*)$", line)
            if match:
                found.setdefault(match.group(1), match.group(2).strip())
    return found


def type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    optional = re.fullmatch(r"Optional\[(.*)\]", text)
    if optional:
        return f"{type_name(optional.group(1))} or null"
    return text.replace("Any", "any").replace("list[any]", "list")


def schema_default(f: dataclasses.Field):
    from omegaconf import MISSING

    if f.default is not dataclasses.MISSING:
        return "(required)" if f.default == MISSING else f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def show(value) -> str:
    """A value as one writes it in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (value == "" or value != value.strip()):
        return repr(value)
    return str(value)


def cell(text: str) -> str:
    """Text for a markdown table cell or paragraph: outside code spans, pipes and `<` escaped; no line breaks."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(code_span(p[1:-1]) if p.startswith("`") else p.replace("|", "\\|").replace("<", "&lt;") for p in parts)


def code_span(text: str) -> str:
    """`text` as code; with a pipe in it, as an HTML <code> element whose pipes are entities (a pipe in a code span
    splits a table cell on GitHub, and a backslash before it shows in Python-Markdown)."""
    if "|" not in text:
        return f"`{text}`"
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


def code(value) -> str:
    return code_span(show(value))


def flat(data: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the page --------------------------------------------------------------------------------------------------------

def field_rows(schema: type, values: dict, comments: dict[str, str], prefix: str = "", skip: tuple = ()) -> list[str]:
    doc, src, said = docstring_help(schema), source_comments(schema), mentions(schema)
    rows = []
    for f in dataclasses.fields(schema):
        if f.name in skip:
            continue
        key = prefix + f.name
        default = schema_default(f)
        if dataclasses.is_dataclass(default):  # a nested schema (run: RunOptions): its keys, dotted
            rows += field_rows(type(default), values.get(f.name) or {}, comments, f"{key}.")
            continue
        default = values.get(f.name, default)
        help_text = (f.metadata.get("help") or doc.get(f.name) or src.get(f.name) or comments.get(key)
                     or said.get(f.name) or "")
        rows.append(f"| `{key}` | {cell(type_name(f.type))} | {code(default)} | {cell(help_text)} |")
    return rows


def table(rows: list[str]) -> list[str]:
    return ["| key | type | default | what it sets |", "| --- | --- | --- | --- |", *rows, ""]


def options(group: str) -> list[Path]:
    from circuitlab.compose import CONFIG_DIR

    return sorted((CONFIG_DIR / group).glob("*.yaml"))


def group_comments(group: str) -> dict[str, str]:
    """A key's trailing comment in any option of the group (the first option, by name, that has one)."""
    comments: dict[str, str] = {}
    for path in options(group):
        for key, text in yaml_comments(path).items():
            comments.setdefault(key, text)
    return comments


def schema_doc(schema: type) -> str:
    return " ".join((schema.__doc__ or "").split()) if schema.__dict__.get("__doc__") else ""


def run_section(schemas: dict[str, type]) -> list[str]:
    from circuitlab.compose import CONFIG_DIR

    values, _, _ = read_yaml(CONFIG_DIR / "config.yaml")
    comments = yaml_comments(CONFIG_DIR / "config.yaml")
    return ["## Run-level keys", "",
            "Keys of the main config (`circuitlab/configs/config.yaml` over `circuitlab.config.RunConfig`), set as "
            "`key=value` on the command line.", "",
            *table(field_rows(schemas["base_config"], values, comments, skip=GROUPS))]


def shared_schema_section(group: str, schema: type, about: str) -> list[str]:
    """A group whose options share one schema (model, sweep): its keys, then what each option sets."""
    comments = group_comments(group)
    lines = [f"## {group}", "", about, "", cell(f"Schema `{schema.__module__}.{schema.__qualname__}`. {schema_doc(schema)}".strip()), "",
             *table(field_rows(schema, {}, comments))]
    lines += [f"Options (`{group}=NAME`; `circuitlab/configs/{group}/NAME.yaml`) and what each sets beyond the defaults above:", "",
              "| option | sets | about |", "| --- | --- | --- |"]
    defaults = {f.name: schema_default(f) for f in dataclasses.fields(schema)}
    for path in options(group):
        values, _, header = read_yaml(path)
        sets = ", ".join(f"`{k}={show(v)}`" for k, v in values.items() if defaults.get(k) != v) or "(the defaults)"
        lines.append(f"| `{path.stem}` | {cell(sets)} | {cell(header)} |")
    return lines + [""]


def own_schema_section(group: str, schemas: dict[str, type], about: str) -> list[str]:
    """A group whose options each extend their own schema (task, method)."""
    lines = [f"## {group}", "", about, ""]
    for path in options(group):
        values, defaults, header = read_yaml(path)
        base = next((d for d in defaults if d.startswith("base_")), None)
        schema = schemas.get(f"{group}/{base}")
        if schema is None:
            raise SystemExit(f"{path}: its defaults name no registered schema ({defaults}); register it in compose.register_configs")
        lines += [f"### {group}: {path.stem}", "", cell(f"`{group}={path.stem}`: {header}".rstrip(": ")), "",
                  cell(f"Schema `{schema.__module__}.{schema.__qualname__}`. {schema_doc(schema)}".strip()), "",
                  *table(field_rows(schema, values, yaml_comments(path)))]
    return lines


def experiment_section() -> list[str]:
    lines = ["## experiment", "",
             "Presets (`+experiment=NAME`; `circuitlab/configs/experiment/NAME.yaml`): the group options each chooses and "
             "the keys it sets, over the main config. Any of them can be overridden on the command line after it.", ""]
    for path in options("experiment"):
        values, defaults, header = read_yaml(path)
        chosen = ", ".join(f"`{d.removeprefix('override /').replace(': ', '=')}`" for d in defaults if d != "_self_")
        sets = ", ".join(f"`{k}={show(v)}`" for k, v in flat(values).items())
        lines += [f"### experiment: {path.stem}", "", cell(header), ""]
        commands = header_commands(path)
        if commands:
            lines += ["```bash", *commands, "```", ""]
        lines += [f"- options: {chosen}" if chosen else "- options: the main config's", f"- sets: {sets}", ""]
    return lines


def launcher_section() -> list[str]:
    from circuitlab.compose import CONFIG_DIR, launcher_options

    lines = ["## hydra/launcher", "",
             "How a multirun's jobs run (`circuitlab run -m hydra/launcher=NAME ...`; [Launchers](scale-out.md#launchers)). "
             f"Options: {', '.join(f'`{name}`' for name in launcher_options())}. The ones shipped in "
             "`circuitlab/configs/hydra/launcher/` and their keys (`hydra.launcher.KEY=...`; the others are Hydra "
             "plugins' own):", ""]
    for path in sorted((CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")):
        values, defaults, header = read_yaml(path)
        comments = yaml_comments(path)
        extends = ", ".join(f"`{d}`" for d in defaults if d != "_self_")
        lines += [f"### hydra/launcher: {path.stem}", "", cell(header) + (f" Extends {extends}." if extends else ""), "",
                  "| key | default | what it sets |", "| --- | --- | --- |"]
        lines += [f"| `hydra.launcher.{k}` | {code(v)} | {cell(comments.get(k, ''))} |" for k, v in flat(values).items()]
        lines.append("")
    return lines


def render() -> str:
    schemas = registered_schemas()
    lines = ["# Config reference", "",
             f"<!-- Generated by scripts/config_reference.py from the config schemas and the shipped YAML; do not edit. "
             f"Regenerate: {REGENERATE}. -->", "",
             "Every key of every config group, with its type, its default and what it sets, generated from the schemas "
             "(`circuitlab/config.py`, each method's `circuitlab/methods/NAME/config.py`, stored in Hydra's ConfigStore by "
             "`circuitlab.compose.register_configs`) and the shipped YAML options (`circuitlab/configs/`). A misspelled "
             "key or a value of the wrong type fails when the config is composed; the allowed values are checked before "
             "any model loads ([Configuration](configuration.md)).", "",
             "Contents: [run-level keys](#run-level-keys), [model](#model), [task](#task), [method](#method), "
             "[sweep](#sweep), [experiment](#experiment), [hydra/launcher](#hydralauncher).", ""]
    lines += run_section(schemas)
    lines += shared_schema_section("model", schemas["model/base_model"],
                                   "What to load ([Models](models.md), [On a real model](real-models.md)): `model=NAME`, then `model.KEY=...`.")
    lines += own_schema_section("task", schemas, "The prompt pairs ([Tasks](tasks.md)): `task=NAME`, then `task.KEY=...`.")
    lines += own_schema_section("method", schemas, "What to compute at each sweep point ([Methods](index.md#where-to-read)): "
                                                   "`method=NAME`, then `method.KEY=...`. Every registered method has its option here.")
    lines += shared_schema_section("sweep", schemas["sweep/base_sweep"],
                                   "Which locations ([Sweeps](sweeps.md)): `sweep=NAME`, then `sweep.KEY=...`.")
    lines += experiment_section()
    lines += launcher_section()
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from what the schemas give")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} is out of date with the "
                  f"config schemas; regenerate it: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
