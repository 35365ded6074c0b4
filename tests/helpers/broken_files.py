"""Damaged copies of a good concept file: each BROKEN_FILES entry is a `change(tensors, metadata)` for
`rewritten`, which writes the copy without the pack's validation (as another tool or damage would)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

NaN = float("nan")


def rewritten(path: Path, out: Path, change: Callable[[dict, dict], None]) -> Path:
    """A copy of a safetensors file with its tensors/metadata changed by `change(tensors, metadata)`, written
    without the pack's validation (as another tool or damage would)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    change(tensors, meta)
    save_file(tensors, str(out), metadata=meta)
    return out


def _first(tensors: dict, part: str) -> str:
    return next(k for k in sorted(tensors) if part in k)


BROKEN_FILES = {
    "nan-embedding": lambda t, m: t[_first(t, "bundle_emb.")].view(-1).__setitem__(0, NaN),
    "inf-embedding": lambda t, m: t[_first(t, "bundle_emb.")].view(-1).__setitem__(0, float("inf")),
    "nan-lora-down": lambda t, m: t[_first(t, "lora_down")].view(-1).__setitem__(3, NaN),
    "inf-lora-up": lambda t, m: t[_first(t, "lora_up")].view(-1).__setitem__(0, -float("inf")),
    "nan-alpha": lambda t, m: t.__setitem__(_first(t, ".alpha"), torch.tensor(NaN)),
    "int8-lora-up": lambda t, m: t.__setitem__(_first(t, "lora_up"), t[_first(t, "lora_up")].to(torch.int8)),
    "float64-embedding": lambda t, m: t.__setitem__(_first(t, "bundle_emb."), t[_first(t, "bundle_emb.")].double()),
    "erasure-without-erased": lambda t, m: m.update({"clif.kind": "erasure"}),
    "erasure-with-bad-erased": lambda t, m: m.update({"clif.kind": "erasure", "clif.metadata": '{"erased": [7]}'}),
}
