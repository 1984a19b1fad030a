"""The spec's documentation, made from its schema (`evolve.spec`): the README's table and docs/SPEC.md.

    python -m evolve.specdoc --write    rewrite both from the schema
    python -m evolve.specdoc --check    exit 1 if either differs from the schema (a test runs this)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from evolve.spec import SECTIONS, Heuristic, Spec

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- spec table: made by python -m evolve.specdoc -->", "<!-- end of spec table -->"
HIDDEN = {"root"}  # set by the loader, not written in a spec


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
        if dataclasses.is_dataclass(v):
            return "(section)"
    else:
        return "required"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"`{v:_}`"
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    return f"`{v!r}`"


def fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in HIDDEN]


def groups() -> list[tuple[str, type]]:
    """Returns (section name, schema class) in the order a spec is read."""
    return [("top level", Spec), *SECTIONS.items(), ("operator.heuristic", Heuristic)]


def readme_table() -> str:
    """Returns the README's table: a row per section, each field with its default."""
    rows = ["| section | fields (default) |", "| --- | --- |"]
    for name, cls in groups():
        parts = [f"`{f.name}` ({_default(f)})" for f in fields(cls) if _default(f) != "(section)"]
        rows.append(f"| {name if name == 'top level' else '`' + name + '`'} | {', '.join(parts)} |")
    return "\n".join(rows)


def full() -> str:
    """Returns docs/SPEC.md: every field, its default and what it means."""
    out = ["# The experiment spec, field by field", "",
           "Made from the schema in `evolve/spec.py` by `python -m evolve.specdoc --write`; a test fails "
           "when they differ. Every field is checked when a spec loads; a bad value stops the CLI with one "
           "line naming the field and the value (exit status 2). Overrides (`budget.trials=4`) are checked "
           "the same way.", ""]
    for name, cls in groups():
        out += [f"## {name}", "", "| field | default | meaning |", "| --- | --- | --- |"]
        for f in fields(cls):
            if _default(f) == "(section)":
                continue
            out.append(f"| `{f.name}` | {_default(f)} | {f.metadata.get('doc', '')} |")
        out.append("")
    return "\n".join(out)


def _with_table(readme: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"specdoc: README.md has no spec table markers ({BEGIN!r} ... {END!r})")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{readme_table()}\n{END}{tail}"


def stale(root: Path = ROOT) -> list[str]:
    """Returns the files whose spec documentation differs from the schema."""
    readme, spec = root / "README.md", root / "docs" / "SPEC.md"
    out = []
    if readme.read_text() != _with_table(readme.read_text()):
        out.append(str(readme))
    if not spec.is_file() or spec.read_text() != full():
        out.append(str(spec))
    return out


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        readme = ROOT / "README.md"
        readme.write_text(_with_table(readme.read_text()))
        (ROOT / "docs" / "SPEC.md").write_text(full())
        return 0
    if argv == ["--check"]:
        bad = stale()
        for path in bad:
            print(f"specdoc: {path} differs from the schema; run: python -m evolve.specdoc --write")
        return 1 if bad else 0
    print("usage: python -m evolve.specdoc --write | --check")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
