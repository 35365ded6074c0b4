"""Contact sheets that show a concept's pictures and what segmentation made of them (node previews, docs).

Pure PIL/numpy: the same sheets serve the ComfyUI nodes and scripts.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..concepts.spec import Concept
from ..sheets import load_font
from .segment import Segmentation

# Distinct, readable part colours (Tableau 10); parts beyond ten reuse them.
PART_COLOURS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
_MASK_COLOUR = (230, 60, 60)


def _fit(image: Image.Image, cell: int) -> tuple[Image.Image, float]:
    """The image scaled to fill a cell along its longer side, and the scale used."""
    scale = min(cell / image.width, cell / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.LANCZOS), scale


def _fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def _dim_outside(image: Image.Image, mask: Optional[np.ndarray], keep: float = 0.3) -> Image.Image:
    """Fade what lies outside the mask toward white, so the cut-out stands out."""
    if mask is None:
        return image
    arr = np.asarray(image, dtype=np.float32)
    faded = arr * keep + 255.0 * (1.0 - keep)
    return Image.fromarray(np.where(mask[..., None], arr, faded).round().astype(np.uint8), "RGB")


def _colour_parts(size: tuple[int, int], mask: np.ndarray, parts: Sequence[np.ndarray]) -> Image.Image:
    """White background, the concept in light grey, each part in its colour."""
    out = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    out[mask] = (210, 210, 210)
    for k, part in enumerate(parts):
        out[part] = PART_COLOURS[k % len(PART_COLOURS)]
    return Image.fromarray(out, "RGB")


class _Sheet:
    """A grid of cells, each with a few lines of (optionally coloured) text below."""

    def __init__(self, columns: int, rows: int, cell: int, text_lines: int, header: str = "") -> None:
        self.cell = cell
        self.font = load_font(max(10, cell // 16))
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        self.line_h = int(probe.textbbox((0, 0), "Ag", font=self.font)[3]) + 3
        self.text_h = text_lines * self.line_h + 6
        self.top = self.line_h + 8 if header else 0
        self.image = Image.new("RGB", (columns * cell, self.top + rows * (cell + self.text_h)), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        if header:
            self.draw.text((4, 4), self.shorten(header, self.image.width - 8), fill=(0, 0, 0), font=self.font)

    def put(self, col: int, row: int, picture: Image.Image, lines: Sequence[tuple[str, tuple[int, int, int]]] = ()) -> None:
        x, y = col * self.cell, self.top + row * (self.cell + self.text_h)
        self.image.paste(picture, (x + (self.cell - picture.width) // 2, y + (self.cell - picture.height) // 2))
        self.draw.rectangle((x, y, x + self.cell - 1, y + self.cell - 1), outline=(200, 200, 200))
        for j, (text, colour) in enumerate(lines):
            text = self.shorten(text, self.cell - 8)
            self.draw.text((x + 4, y + self.cell + 3 + j * self.line_h), text, fill=colour, font=self.font)

    def shorten(self, text: str, width: int) -> str:
        """The text, cut with an ellipsis where it would run past `width` pixels."""
        if self.draw.textlength(text, font=self.font) <= width:
            return text
        while text and self.draw.textlength(text + "…", font=self.font) > width:
            text = text[:-1]
        return text + "…"


def _header(concept: Concept) -> str:
    parts = f", parts: {', '.join(concept.parts)}" if concept.parts else ""
    return f"{concept.name}: {concept.token} ({concept.class_word}), {len(concept.images)} picture(s){parts}"


def _file_name(source: str) -> str:
    return source.replace("\\", "/").rsplit("/", 1)[-1]


def concept_sheet(concept: Concept, cell: int = 192, columns: int = 4) -> Image.Image:
    """Every picture of the concept; where a mask is known, the outside is faded."""
    n = len(concept.images)
    columns = max(1, min(columns, n))
    sheet = _Sheet(columns, (n + columns - 1) // columns, cell, 1, _header(concept))
    for i, (img, mask) in enumerate(zip(concept.images, concept.masks)):
        thumb, _ = _fit(img, cell)
        shown = _dim_outside(thumb, None if mask is None else _fit_mask(mask, thumb.size))
        note = "" if mask is None else " (mask)"
        sheet.put(i % columns, i // columns, shown, [(_file_name(concept.sources[i]) + note, (0, 0, 0))])
    return sheet.image


def segmentation_sheet(concept: Concept, segmentations: Sequence[Segmentation], cell: int = 192) -> Image.Image:
    """One row per picture: the picture, its concept mask (tinted), its parts in colour with their names."""
    most_parts = max([len(s.parts) for s in segmentations] + [1])
    sheet = _Sheet(3, len(segmentations), cell, most_parts, _header(concept))
    for row, (img, seg) in enumerate(zip(concept.images, segmentations)):
        thumb, _ = _fit(img, cell)
        mask = _fit_mask(seg.mask, thumb.size)
        tint = np.asarray(thumb, dtype=np.float32)
        tint[mask] = tint[mask] * 0.5 + np.array(_MASK_COLOUR, np.float32) * 0.5
        parts = [_fit_mask(p, thumb.size) for p in seg.parts]
        coverage = f"mask: {100.0 * seg.mask.mean():.0f}% of the picture"
        sheet.put(0, row, thumb, [(_file_name(concept.sources[row]), (0, 0, 0))])
        sheet.put(1, row, Image.fromarray(tint.round().astype(np.uint8), "RGB"), [(coverage, (0, 0, 0))])
        names = [(name, PART_COLOURS[k % len(PART_COLOURS)]) for k, name in enumerate(seg.part_names)]
        sheet.put(2, row, _colour_parts(thumb.size, mask, parts), names or [("no parts", (0, 0, 0))])
    return sheet.image
