"""Prompt → UNet conditioning, the way diffusers' Stable Diffusion pipelines encode it.

SD1.x/SD2.x: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states
concatenated, plus the second encoder's projected pooled output, and an empty negative prompt as zeros
(the SDXL base model's `force_zeros_for_empty_prompt`). Prompts are padded or cut to the tokenizer's 77
tokens; a cut is reported through `log`, naming the dropped words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass
class TextConditioning:
    """`embeds` [1, tokens, context width]; `pooled` [1, width] for SDXL, else None."""

    embeds: torch.Tensor
    pooled: Optional[torch.Tensor] = None

    def zeros(self) -> "TextConditioning":
        return TextConditioning(torch.zeros_like(self.embeds),
                                None if self.pooled is None else torch.zeros_like(self.pooled))


def _token_ids(tokenizer: Any, prompt: str, log: Callable[[str], None]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    inputs = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    full = tokenizer(prompt, add_special_tokens=False).input_ids
    kept = tokenizer.model_max_length - 2  # start and end tokens
    if len(full) > kept:
        log(f"prompt cut to {tokenizer.model_max_length} tokens; dropped: {tokenizer.decode(full[kept:])!r}")
    return inputs.input_ids, inputs.attention_mask


def encode_prompt(base: Any, prompt: str, log: Callable[[str], None] = lambda m: None) -> TextConditioning:
    """Encode `prompt` (placeholders already expanded) with every text encoder of `base`."""
    device = base.device
    if base.family != "sdxl":
        slot = base.text[0]
        ids, mask = _token_ids(slot.tokenizer, prompt, log)
        use_mask = bool(getattr(slot.encoder.config, "use_attention_mask", False))
        embeds = slot.encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
        return TextConditioning(embeds.to(base.dtype))
    hidden, pooled = [], None
    for slot in base.text:
        ids, _ = _token_ids(slot.tokenizer, prompt, log)
        out = slot.encoder(ids.to(device), output_hidden_states=True)
        if out[0].ndim == 2:  # the projected pooled output of the encoder with a projection (the second)
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return TextConditioning(torch.cat(hidden, dim=-1).to(base.dtype), pooled.to(base.dtype))


def encode_negative(base: Any, negative: str, positive: TextConditioning,
                    log: Callable[[str], None] = lambda m: None) -> TextConditioning:
    """The negative prompt's conditioning; for SDXL an empty one is all zeros, like diffusers' SDXL pipeline."""
    if base.family == "sdxl" and not negative:
        return positive.zeros()
    return encode_prompt(base, negative, log)
