"""Pictures from users' files: one way to open them, one pixel limit, one minimum size.

Concept folders, masks, purification inputs and region masks all open pictures through `guarded_open`, so a
decompression bomb (a small file that decodes to hundreds of megapixels) is refused the same way everywhere
before it is decoded, and `check_min_side` applies one minimum size to every picture and mask.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from PIL import Image

from .errors import ClifError

MIN_SIDE = 64
"""Smallest accepted picture or mask side in pixels (the sandbox world renders 64x64 images); a smaller one
carries too little to segment, purify or place a region with."""
MAX_PIXELS = 64 * 1024 * 1024
"""Largest picture decoded (64 megapixels, about 200 MB as RGB): more is refused as a possible
decompression bomb before decoding. Pictures are downscaled to 2048 px per side or less anyway."""


class PictureRefused(ClifError):
    """A picture that is not opened: unreadable, a decompression bomb, or too small."""


def _bomb(path: Path, what: str) -> PictureRefused:
    return PictureRefused(
        f"{what} {path} is larger than {MAX_PIXELS // (1024 * 1024)} megapixels and is refused as a possible "
        "decompression bomb; scale it down (CLIF never uses more than 2048 px per side)"
    )


@contextmanager
def guarded_open(path: str | os.PathLike, what: str) -> Iterator[Image.Image]:
    """`Image.open(path)` for a `with` block, refused (PictureRefused naming `what` and the file) when the file
    is not a picture or holds more than MAX_PIXELS, before any pixel is decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise _bomb(path, what) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise PictureRefused(f"{what} {path} cannot be read as a picture ({type(err).__name__}: {err})") from None
    with im:
        if im.width * im.height > MAX_PIXELS:
            raise _bomb(path, what)
        yield im


def open_picture(path: str | os.PathLike, what: str) -> Image.Image:
    """The fully decoded picture at `path` (see `guarded_open`)."""
    with guarded_open(path, what) as im:
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise PictureRefused(f"{what} {path} cannot be decoded ({type(err).__name__}: {err})") from None
        return im.copy()


def check_min_side(size: tuple[int, int], what: str, min_side: int = MIN_SIDE) -> None:
    """Refuse a picture or mask of (width, height) `size` whose short side is below `min_side`."""
    width, height = size
    if min(width, height) < min_side:
        raise PictureRefused(
            f"{what} is {width}x{height}, below the minimum of {min_side} px on the short side; use a larger one"
        )
