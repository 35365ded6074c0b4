"""The prompts of an erasure run, encoded once, and the UNet call that every erasure step goes through.

The text encoders stay frozen in erasure, so each prompt (the unconditional "", every target, alternative
and preservation prompt) is encoded once; a UNet batch then names its rows' prompts by index. The
unconditional prompt is the encoded empty string, as ComfyUI and SD1/SD2 pipelines use it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch

from clif_core.models.prompts import unet_conditioning

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

NULL = 0
"""Index of the unconditional prompt "" in every PromptTable."""


@dataclass
class PromptTable:
    """`prompts[i]` encoded as `hidden[i]` ([tokens, width]); SDXL adds `pooled[i]` and the size numbers."""

    prompts: list[str]
    hidden: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    time_ids: Optional[torch.Tensor] = None  # [6]

    def index(self, prompt: str) -> int:
        return self.prompts.index(prompt)

    def unet_kwargs(self, rows: torch.Tensor) -> dict[str, Any]:
        """encoder_hidden_states (and SDXL's added_cond_kwargs) for a batch whose row r uses prompt rows[r]."""
        rows = rows.to(self.hidden.device)
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.hidden[rows]}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.pooled[rows],
                "time_ids": self.time_ids.unsqueeze(0).expand(len(rows), -1),
            }
        return kwargs


def unique_prompts(*groups: Sequence[Optional[str]]) -> list[str]:
    """"" first, then every distinct prompt of the groups in order of appearance."""
    out = [""]
    for group in groups:
        for p in group:
            if p is not None and p not in out:
                out.append(p)
    return out


@torch.no_grad()
def encode_prompts(base: BaseModel, prompts: Sequence[str], size: tuple[int, int]) -> PromptTable:
    """Encode `prompts` with the base's frozen text encoders (SDXL: image `size` (h, w) for the size numbers)."""
    hidden, added = unet_conditioning(base, list(prompts), base.device, size)
    hidden = hidden.to(base.dtype)
    if added is None:
        return PromptTable(list(prompts), hidden)
    return PromptTable(list(prompts), hidden, added["text_embeds"].to(base.dtype), added["time_ids"][0].to(base.dtype))


def mixed_autocast(base: BaseModel) -> contextlib.AbstractContextManager:
    """Autocast to the base's dtype when it is not float32: trained weights are float32 master copies inside
    a half-precision UNet, which only autocast lets run together outside the training loop."""
    if base.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(base.device.type, dtype=base.dtype)


def unet_predict(base: BaseModel, table: PromptTable, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The UNet's raw prediction (ε or v, the base's prediction type) for latents `x` at timesteps `t`
    (one per row, or a scalar) under prompts `rows`, as float32."""
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    out = base.unet(x.to(base.device, base.dtype), t.to(base.device), **table.unet_kwargs(rows)).sample
    return out.float()


def batched(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
