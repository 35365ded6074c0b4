"""Prompt encoding for training, the way Stable Diffusion pipelines condition the UNet.

SD1/SD2: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states side by side,
plus the second encoder's projected pooled output and the size/crop numbers as added conditions.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch


def token_ids(slot: Any, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    tokenizer = slot.tokenizer
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


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
