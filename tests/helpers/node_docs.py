"""The node reference as written in docs/nodes.md, to compare with what the server lists."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "nodes.md"


def documented_nodes() -> dict[str, dict[str, list[str]]]:
    """node id → {"inputs": [...], "outputs": [...]} as written in docs/nodes.md."""
    nodes: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^### .*\(`(\w+)`\)", line)
        if heading:
            current = nodes.setdefault(heading.group(1), {"inputs": [], "outputs": []})
            continue
        field = re.match(r"^- (inputs|outputs): (.*)$", line)
        if field and current is not None:
            current[field.group(1)] = re.findall(r"`(\w+)`", field.group(2))
    return nodes
