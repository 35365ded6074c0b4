"""A fresh LoRA to train on one module (a text encoder, the UNet), owned by a context manager that takes off
exactly that adapter again, also after a cancel or an error."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from clif_core.models.adapters import remove_adapters


@contextlib.contextmanager
def trainable_lora(module: torch.nn.Module, adapter: str, rank: int, alpha: float, targets: Sequence[str],
                   seed: int) -> Iterator[dict[str, torch.nn.Parameter]]:
    """A peft LoRA `adapter` (rank, alpha, target module names) on `module`, its weights drawn from `seed`;
    yields its parameters by name, as float32 master weights over the frozen (maybe half-precision) ones."""
    from peft import LoraConfig

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0),
                               adapter_name=adapter)
        params = {n: p for n, p in module.named_parameters() if f".{adapter}." in n}
        for p in params.values():
            p.data = p.data.float()
        yield params
    finally:
        remove_adapters(module, [adapter])
