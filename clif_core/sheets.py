"""Labelled contact sheets: image grids whose rows and columns say what they show, drawn into the image
(benchmark grids, before/after grids of an erasure or a purification)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def load_font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at `size` px (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(rows: Sequence[tuple[str, Sequence[Any]]], columns: Sequence[str] = (), cell: int = 64,
                  label_width: int = 150, pad: int = 2) -> Image.Image:
    """Images (PIL or uint8 arrays) in rows, each row labelled on the left, optional column titles on top.
    The text grows with cells larger than 132 px (11 px below)."""
    size = max(11, cell // 12)
    font, line_height = load_font(size), size + 1
    n_cols = max(len(images) for _, images in rows)
    top = 2 * line_height + 4 if columns else pad
    sheet = Image.new("RGB", (label_width + n_cols * (cell + pad) + pad, top + len(rows) * (cell + pad) + pad),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(columns):
        x = label_width + pad + c * (cell + pad)
        for k, line in enumerate(_wrap(title, cell, draw, font)[:2]):
            draw.text((x, 2 + line_height * k), line, fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = top + r * (cell + pad)
        for k, line in enumerate(_wrap(label, label_width - 6, draw, font)[:5]):
            draw.text((4, y + 2 + line_height * k), line, fill="black", font=font)
        for c, image in enumerate(images):
            im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
            sheet.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST),
                        (label_width + pad + c * (cell + pad), y))
    return sheet


def with_footer(sheet: Image.Image, lines: Sequence[str], size: int = 11, pad: int = 4) -> Image.Image:
    """`sheet` with `lines` of text below it, each wrapped to the sheet's width."""
    font = load_font(size)
    measure = ImageDraw.Draw(sheet)
    wrapped = [w for line in lines for w in _wrap(line, sheet.width - 2 * pad, measure, font)]
    out = Image.new("RGB", (sheet.width, sheet.height + len(wrapped) * (size + 2) + pad), "white")
    out.paste(sheet.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(wrapped):
        draw.text((pad, sheet.height + k * (size + 2)), line, fill="black", font=font)
    return out


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


def before_after_grid(before: Sequence[Any], after: Sequence[Any], erased: str, cell: int = 64,
                      by: str = "row") -> Image.Image:
    """`before` and `after` images (the same seeds or the same picture) labelled "before" and
    "after: <erased> erased", as two rows (`by="row"`) or, pairing them image by image, as two columns."""
    labels = ("before", f"after: {erased} erased")
    if by == "row":
        return labelled_grid(list(zip(labels, (before, after))), cell=cell, label_width=cell * 3 // 4)
    if by == "column":
        return labelled_grid([("", pair) for pair in zip(before, after)], labels, cell=cell, label_width=0)
    raise ValueError(f"by={by!r}: use 'row' or 'column'")
