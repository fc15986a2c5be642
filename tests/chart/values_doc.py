"""The chart README's values table and the descriptions in values.schema.json, generated from
values.yaml and its `# --` comments.

`python -m tests.chart.values_doc` rewrites the table and both charts' schemas in place
(`make chart-docs`); tests/chart/test_static.py fails when either is stale, so values, schema
and docs never drift.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.chart.helpers import CHART, SUBCHART

START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def _description(lines: list[str], line: int) -> str | None:
    """The `# -- ...` comment block right above a key (continuation lines start with `#`)."""
    block: list[str] = []
    for text in reversed(lines[:line]):
        stripped = text.strip()
        if not stripped.startswith("#"):
            break
        block.insert(0, stripped.lstrip("#").strip())
        if stripped.startswith("# --"):
            return " ".join(part for part in block if part).removeprefix("-- ").strip()
    return None


def _rows(node: yaml.MappingNode, lines: list[str], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        described = _description(lines, key_node.start_mark.line)
        nested = isinstance(value_node, yaml.MappingNode) and value_node.value
        if nested and any(_description(lines, k.start_mark.line) for k, _ in value_node.value):
            if described:
                rows.append((key, "", described))
            rows += _rows(value_node, lines, f"{key}.")
        elif described:
            default = yaml.safe_load(yaml.serialize(value_node))
            rows.append((key, json.dumps(default, separators=(", ", ": ")), described))
    return rows


def _markdown(text: str) -> str:
    """Comment text as a table cell: `<fullname>` must not read as an HTML tag, `|` as a column."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def table(values_file: Path, prefix: str = "") -> str:
    text = values_file.read_text()
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    rows = _rows(root, text.splitlines(), prefix)
    cells = [
        f"| `{key}` | {f'`{default}`' if default else ''} | {_markdown(what)} |"
        for key, default, what in rows
    ]
    return "\n".join(["| Key | Default | Description |", "|---|---|---|", *cells])


def render() -> str:
    """The parent's values, then every value of the Redis subchart (set under `redis:`)."""
    return (
        f"{table(CHART / 'values.yaml')}\n\n"
        "Every value of the bundled Redis chart (`charts/redis`), set under `redis:`; "
        "where the table above sets one too, that default wins:\n\n"
        f"{table(SUBCHART / 'values.yaml', 'redis.')}"
    )


def _describe(node: yaml.MappingNode, schema: dict[str, Any], lines: list[str]) -> None:
    """Set each schema property's description from its key's comment, recursing into inline
    objects (a $ref'd definition keeps the descriptions written in the schema)."""
    properties = schema.get("properties", {})
    for key_node, value_node in node.value:
        prop = properties.get(key_node.value)
        if prop is None:
            continue
        described = _description(lines, key_node.start_mark.line)
        if described:
            prop["description"] = described
        if isinstance(value_node, yaml.MappingNode) and "properties" in prop:
            _describe(value_node, prop, lines)


def described_schema(chart: Path) -> str:
    """The chart's values.schema.json text with descriptions from its values.yaml."""
    schema = json.loads((chart / "values.schema.json").read_text())
    text = (chart / "values.yaml").read_text()
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    _describe(root, schema, text.splitlines())
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def updated(readme: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README has no {START} ... {END} markers")
    return pattern.sub(lambda _: f"{START}\n{render()}\n{END}", readme)


if __name__ == "__main__":
    readme = CHART / "README.md"
    readme.write_text(updated(readme.read_text()))
    for chart in (CHART, SUBCHART):
        (chart / "values.schema.json").write_text(described_schema(chart))
    sys.exit(0)
