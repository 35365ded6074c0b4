"""Prompt encoding, the way Stable Diffusion pipelines condition the UNet (training and erasure use it).

SD1/SD2: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states side by side,
plus the second encoder's projected pooled output and the size/crop numbers as added conditions.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

import torch


_IDS: "weakref.WeakKeyDictionary[Any, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()
"""Token ids per tokenizer and prompt: training captions come back every epoch, and tokenizing them again every
step is work repeated for nothing. Nothing in the pack changes a tokenizer in place (concept tokens are added
to a copy), so a tokenizer's ids stay valid."""
IDS_KEPT = 8192  # prompts per tokenizer; past that the cache starts over


def token_ids(slot: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """[len(prompts), model_max_length] token ids (padded, truncated) on `device`; each prompt tokenized once."""
    tokenizer = slot.tokenizer
    known = _IDS.setdefault(tokenizer, {})
    new = sorted({p for p in prompts if p not in known})
    if new:
        if len(known) + len(new) > IDS_KEPT:
            known.clear()
            new = sorted(set(prompts))
        ids = tokenizer(new, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        known.update(zip(new, ids))
    return torch.stack([known[p] for p in prompts]).to(device)


def pooled_features(slot: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """The end-of-text feature per prompt: projected (`text_embeds`) when the encoder has CLIP's text
    projection, else the pooled hidden state (SD1/SD2 encoders ship without the projection)."""
    out = slot.encoder(input_ids=token_ids(slot, prompts, device))
    return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output


def unet_conditioning(
    base: Any, prompts: Sequence[str], device: torch.device, size: tuple[int, int]
) -> tuple[torch.Tensor, Optional[dict[str, torch.Tensor]]]:
    """(encoder_hidden_states, added_cond_kwargs or None) for `prompts`; `size` is the image (h, w) in pixels."""
    if base.family != "sdxl":
        slot = base.text[0]
        return slot.encoder(input_ids=token_ids(slot, prompts, device))[0], None
    hidden = []
    for slot in base.text:
        out = slot.encoder(input_ids=token_ids(slot, prompts, device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    pooled = out.text_embeds  # the last (second) encoder's projected output, as SDXL pipelines take it
    h, w = size
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=device, dtype=pooled.dtype).repeat(len(prompts), 1)
    return torch.cat(hidden, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}
