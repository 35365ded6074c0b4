"""Before/after grids carry their labels in the image (clif_core.sheets)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clif_core.sheets import before_after_grid, labelled_grid


def pictures(n: int, colour: tuple[int, int, int], side: int = 64) -> list[Image.Image]:
    return [Image.new("RGB", (side, side), colour) for _ in range(n)]


def inked(region: Image.Image) -> int:
    """Pixels of a white band that are not white: the drawn text."""
    return int((np.asarray(region.convert("L")) < 128).sum())


def test_rows_are_labelled_before_and_after_on_the_left():
    before, after = pictures(4, (200, 30, 30)), pictures(4, (30, 30, 200))
    sheet = before_after_grid(before, after, "circle", cell=64)
    label_width = sheet.width - 4 * 66 - 2
    assert label_width > 0 and sheet.width > 4 * 64 and sheet.height >= 2 * 64
    before_label = sheet.crop((0, 0, label_width, 64))
    after_label = sheet.crop((0, 66, label_width, 130))
    assert inked(before_label) > 20 and inked(after_label) > inked(before_label), "the label bands are blank"
    # the images sit right of the labels, in order: row 1 before, row 2 after
    assert sheet.getpixel((label_width + 2 + 10, 10)) == (200, 30, 30)
    assert sheet.getpixel((label_width + 2 + 3 * 66 + 10, 66 + 10)) == (30, 30, 200)


def test_columns_pair_each_picture_with_its_purified_version_under_titles():
    sheet = before_after_grid(pictures(1, (200, 30, 30)), pictures(1, (30, 30, 200)), "circle", cell=192,
                              by="column")
    top = sheet.height - 192 - 4
    assert top > 0 and sheet.width == 2 * 194 + 2
    assert inked(sheet.crop((0, 0, 194, top))) > 20 and inked(sheet.crop((194, 0, sheet.width, top))) > 20
    assert sheet.getpixel((10, top + 10)) == (200, 30, 30) and sheet.getpixel((194 + 10, top + 10)) == (30, 30, 200)


def test_the_after_label_names_what_was_erased():
    """Two erased names give two different after bands; the before bands are the same."""
    a = before_after_grid(pictures(2, (0, 0, 0)), pictures(2, (0, 0, 0)), "circle", by="column")
    b = before_after_grid(pictures(2, (0, 0, 0)), pictures(2, (0, 0, 0)), "square and triangle", by="column")
    top = a.height - 2 * 66 - 2
    assert a.crop((0, 0, 66, top)).tobytes() == b.crop((0, 0, 66, top)).tobytes()
    assert a.crop((66, 0, 132, top)).tobytes() != b.crop((66, 0, 132, top)).tobytes()


def test_text_grows_with_the_cells():
    small = labelled_grid([("before", pictures(1, (0, 0, 0)))], cell=64, label_width=100)
    large = labelled_grid([("before", pictures(1, (0, 0, 0), 192))], cell=192, label_width=100)
    assert inked(large.crop((0, 0, 100, 40))) > inked(small.crop((0, 0, 100, 40)))


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="use 'row' or 'column'"):
        before_after_grid(pictures(1, (0, 0, 0)), pictures(1, (0, 0, 0)), "circle", by="diagonal")
