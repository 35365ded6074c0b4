"""The optimizer: bitsandbytes' 8-bit AdamW on CUDA when it is installed, else torch's AdamW."""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

import torch


def bitsandbytes_usable(device: torch.device) -> bool:
    """8-bit AdamW needs bitsandbytes and a CUDA device (its CPU support is partial)."""
    return device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None


def make_optimizer(
    groups: Sequence[dict[str, Any]],
    device: torch.device,
    prefer_8bit: bool,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> tuple[torch.optim.Optimizer, str]:
    """AdamW over `groups` (torch param-group dicts); returns it and a short description for the log."""
    if prefer_8bit and bitsandbytes_usable(device):
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=betas, eps=eps, weight_decay=weight_decay), "8-bit AdamW"
    # foreach: what torch picks on CUDA by default; on the CPU it would step tensor by tensor in Python (a LoRA
    # has a hundred small tensors), and the multi-tensor step gives the same numbers bit for bit there
    optimizer = torch.optim.AdamW(groups, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True)
    return optimizer, "AdamW" + (" (bitsandbytes not available: 32-bit)" if prefer_8bit else "")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate factor for the 0-based `step`: linear warm-up, then constant (as CLIF's public code)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
