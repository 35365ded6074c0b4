"""What a benchmark writes: a markdown table of estimates with intervals and a labelled PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from clif_core.fileio import atomic_path

from .stats import Estimate


def markdown_table(rows: Sequence[tuple[str, dict[str, Estimate]]], metrics: Sequence[tuple[str, str]],
                   first: str = "method", digits: int = 2) -> str:
    """One row per (label, estimates); `metrics` is (key, column title). Cells: `mean [lo, hi]`."""
    head = "| " + " | ".join([first, *(title for _, title in metrics)]) + " |"
    rule = "|" + "---|" * (len(metrics) + 1)
    body = ["| " + " | ".join([label, *(est[key].format(digits) for key, _ in metrics)]) + " |" for label, est in rows]
    return "\n".join([head, rule, *body])


def labelled_grid(rows: Sequence[tuple[str, Sequence[Any]]], columns: Sequence[str] = (), cell: int = 64,
                  label_width: int = 150, pad: int = 2) -> Image.Image:
    """Images (PIL or uint8 arrays) in rows, each row labelled on the left, optional column titles on top."""
    from clif_core.augment.preview import load_font

    font = load_font(11)
    n_cols = max(len(images) for _, images in rows)
    top = 28 if columns else pad
    sheet = Image.new("RGB", (label_width + n_cols * (cell + pad) + pad, top + len(rows) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        x = label_width + pad + c * (cell + pad)
        for k, line in enumerate(_wrap(title, cell, draw, font)[:2]):
            draw.text((x, 2 + 12 * k), line, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = top + r * (cell + pad)
        for k, line in enumerate(_wrap(label, label_width - 6, draw, font)[:5]):
            draw.text((4, y + 2 + 12 * k), line, fill="black", font=font)
        for c, image in enumerate(images):
            im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST),
                        (label_width + pad + c * (cell + pad), y))
    return sheet


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font: Any) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


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
