"""Atomic writes: a crash or a cancel never leaves a half-written file where a good one was."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, else removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write a safetensors file atomically (contiguous CPU copies of the tensors)."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
