"""Reading a safetensors file's header and tensors defensively: sizes checked before anything is parsed,
damage reported as a ClifError naming the file (concept files, patches, exported LoRAs)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from clif_core.errors import ClifError

MAX_HEADER_BYTES = 16 * 1024 * 1024
"""Largest safetensors JSON header read (an SDXL LoRA on every supported module needs well under 1 MiB)."""
MAX_METADATA_BYTES = 1024 * 1024
"""Largest total size of the string metadata (keys + values): recipe, concept list, thumbnail."""


def metadata_size(meta: Mapping[str, str]) -> int:
    """Bytes of a string metadata table (keys and values, UTF-8), what MAX_METADATA_BYTES limits."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def read_header(path: str | os.PathLike, where: Optional[str] = None) -> dict[str, Any]:
    """The JSON header of a safetensors file, with its size checked before it is read."""
    where = where or str(path)
    p = Path(path)
    if not p.is_file():
        raise ClifError(f"{where}: no such file; check the path or the models folder")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ClifError(f"{where} is not a safetensors file (only {size} bytes); it is empty or truncated")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            if n > size:
                raise ClifError(f"{where} is not a safetensors file (a .ckpt, .pt or other format?); "
                                "concept files are .safetensors written by CLIF")
            raise ClifError(
                f"{where}: its header is {n // 1024} KiB, over the {MAX_HEADER_BYTES // 1024} KiB limit for "
                "concept files; the metadata is oversize (or it is not a concept file)"
            )
        if n > size - 8:
            raise ClifError(f"{where} is truncated or not a safetensors file; copy or export it again")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ClifError(f"{where} is not a safetensors file (its header is not JSON); "
                        "concept files are .safetensors written by CLIF") from None
    if not isinstance(header, dict):
        raise ClifError(f"{where} is not a safetensors file (bad header); concept files are written by CLIF")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ClifError(f"{where}: its metadata is not a string table; the file is damaged")
    meta_size = metadata_size(meta)
    if meta_size > MAX_METADATA_BYTES:
        raise ClifError(
            f"{where}: its metadata is {meta_size // 1024} KiB, over the {MAX_METADATA_BYTES // 1024} KiB limit; "
            "the file is not a sane concept file (refused rather than parsed)"
        )
    return header


def read_tensors(path: str | os.PathLike, where: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (no pickle involved); damage becomes a ClifError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ClifError(f"{where}: its tensors cannot be read ({err}); the file is truncated or damaged") from None
