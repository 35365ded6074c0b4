"""Collect the `--json` files of several benchmark scripts into one JSON and one markdown table.

    python benchmarks/suite_report.py OUT/train_step.json OUT/sampling.json OUT/erase.json \
        --json OUT/suite.json --markdown OUT/suite.md

Every input is one script's result (bench_common's format: benchmark, device, settings, rows, ratios); the
suite JSON holds them by benchmark name, with the torch version and the time the report was made. The
markdown has one section per benchmark: its device and settings, a table of its rows and one of its ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Sequence


def collect(paths: Sequence[Path]) -> dict[str, Any]:
    import torch

    sections = {}
    for path in paths:
        payload = json.loads(path.read_text(encoding="utf-8"))
        sections[payload["benchmark"]] = payload
    return {"made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "sections": sections}


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(suite: dict[str, Any]) -> str:
    lines = [f"# Benchmark suite ({suite['made']}, torch {suite['torch']})", ""]
    for name, section in suite["sections"].items():
        lines += [f"## {name}", "", f"Device: {section['device']}. Settings: "
                  + ", ".join(f"{k} {_cell(v)}" for k, v in section["settings"].items()) + ".", ""]
        columns: list[str] = []
        for row in section["rows"]:
            columns += [k for k in row if k != "name" and k not in columns]
        lines += _table(["", *columns], [[row["name"], *(row.get(c) for c in columns)] for row in section["rows"]])
        if section["ratios"]:
            lines += [""] + _table(["ratio", "value"], [[k, v] for k, v in section["ratios"].items()])
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="result files of the benchmark scripts (--json)")
    parser.add_argument("--json", type=Path, required=True, help="the suite's JSON")
    parser.add_argument("--markdown", type=Path, required=True, help="the suite's markdown table")
    args = parser.parse_args()
    suite = collect(args.inputs)
    args.json.write_text(json.dumps(suite, indent=1), encoding="utf-8")
    args.markdown.write_text(markdown(suite), encoding="utf-8")
    print(markdown(suite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
