"""What a benchmark writes: a markdown table of estimates with intervals, PNGs (grids: clif_core.sheets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from clif_core.fileio import atomic_path

from .stats import Estimate


def markdown_table(rows: Sequence[tuple[str, dict[str, Estimate]]], metrics: Sequence[tuple[str, str]],
                   first: str = "method", digits: int = 2) -> str:
    """One row per (label, estimates); `metrics` is (key, column title). Cells: `mean [lo, hi]`."""
    head = "| " + " | ".join([first, *(title for _, title in metrics)]) + " |"
    rule = "|" + "---|" * (len(metrics) + 1)
    body = ["| " + " | ".join([label, *(est[key].format(digits) for key, _ in metrics)]) + " |" for label, est in rows]
    return "\n".join([head, rule, *body])


def save_png(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def finite_json(obj: Any) -> Any:
    """NaN → null throughout, so the JSON record is strict JSON."""
    if isinstance(obj, float):
        return None if obj != obj else obj
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj
