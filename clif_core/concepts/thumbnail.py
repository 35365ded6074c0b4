"""The thumbnail a concept file carries (`ConceptFile.thumbnail`, modelspec.thumbnail): a small PNG."""

from __future__ import annotations

import io
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_THUMBNAIL_BYTES = 256 * 1024
"""Largest thumbnail PNG; a 256x256 image is typically 50-150 KiB."""


def make_thumbnail(image: Any, size: int = 256) -> bytes:
    """PNG bytes of a PIL image scaled to fit `size` x `size`, for `ConceptFile.thumbnail`."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
