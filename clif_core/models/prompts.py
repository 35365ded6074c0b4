"""Prompt → UNet conditioning, the one encoder every part of the pack uses (training, sampling, erasure).

SD1.x/SD2.x: the text encoder's last hidden state. SDXL: both encoders' penultimate hidden states side by
side, the second encoder's projected pooled output, and the size/crop numbers (`sdxl_time_ids`) as added
conditions. Prompts are padded or cut to the tokenizer's 77 tokens.

The attention mask follows diffusers' Stable Diffusion pipelines (and so the models' training): the mask
goes to the text encoder only when its config asks for one (`use_attention_mask`, which no published SD
CLIP encoder sets), so padding tokens are attended to, as the UNet saw them in training. SDXL's pipeline
never passes a mask.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

if TYPE_CHECKING:
    from .base import BaseModel, TextEncoderSlot

_IDS: "weakref.WeakKeyDictionary[Any, dict[str, tuple[torch.Tensor, torch.Tensor]]]" = weakref.WeakKeyDictionary()
"""(token ids, attention mask) per tokenizer and prompt: training captions come back every epoch, and
tokenizing them again every step is work repeated for nothing. Nothing in the pack changes a tokenizer in
place (concept tokens are added to a copy), so a tokenizer's ids stay valid."""
IDS_KEPT = 8192  # prompts per tokenizer; past that the cache starts over


@dataclass
class TextConditioning:
    """`embeds` [B, tokens, context width]; `pooled` [B, width] for SDXL, else None."""

    embeds: torch.Tensor
    pooled: Optional[torch.Tensor] = None

    def zeros(self) -> "TextConditioning":
        return TextConditioning(torch.zeros_like(self.embeds),
                                None if self.pooled is None else torch.zeros_like(self.pooled))


def _tokenized(slot: "TextEncoderSlot", prompts: Sequence[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tokenizer = slot.tokenizer
    known = _IDS.setdefault(tokenizer, {})
    new = sorted({p for p in prompts if p not in known})
    if new:
        if len(known) + len(new) > IDS_KEPT:
            known.clear()
            new = sorted(set(prompts))
        out = tokenizer(new, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt")
        known.update(zip(new, zip(out.input_ids, out.attention_mask)))
    return [known[p] for p in prompts]


def token_ids(slot: "TextEncoderSlot", prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """[len(prompts), model_max_length] token ids (padded, truncated) on `device`; each prompt tokenized once."""
    return torch.stack([ids for ids, _ in _tokenized(slot, prompts)]).to(device)


def _encode(slot: "TextEncoderSlot", prompts: Sequence[str], device: torch.device, **kwargs: Any) -> Any:
    """The encoder's output for `prompts`, with the attention mask where the encoder asks for one."""
    tokenized = _tokenized(slot, prompts)
    ids = torch.stack([ids for ids, _ in tokenized]).to(device)
    mask = None
    if getattr(slot.encoder.config, "use_attention_mask", False):
        mask = torch.stack([m for _, m in tokenized]).to(device)
    return slot.encoder(input_ids=ids, attention_mask=mask, **kwargs)


def pooled_features(slot: "TextEncoderSlot", prompts: Sequence[str], device: torch.device) -> torch.Tensor:
    """The end-of-text feature per prompt: projected (`text_embeds`) when the encoder has CLIP's text
    projection, else the pooled hidden state (SD1/SD2 encoders ship without the projection)."""
    out = _encode(slot, prompts, device)
    return out.text_embeds if getattr(out, "text_embeds", None) is not None else out.pooler_output


def encode_text(base: "BaseModel", prompts: Sequence[str], device: Optional[torch.device] = None) -> TextConditioning:
    """`prompts` (placeholders already expanded) through every text encoder of `base`, in the encoders'
    own dtype; `device` defaults to the base's."""
    device = base.device if device is None else device
    if base.family != "sdxl":
        return TextConditioning(_encode(base.text[0], prompts, device)[0])
    hidden = []
    for slot in base.text:
        out = _encode(slot, prompts, device, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
    # the last (second) encoder's projected output, as SDXL pipelines take it
    return TextConditioning(torch.cat(hidden, dim=-1), out.text_embeds)


def sdxl_time_ids(height: int, width: int, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """SDXL's added size condition [rows, 6]: original size, crop top-left (0, 0), target size, all in pixels
    (the image is drawn at the size it was asked for, uncropped)."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device).repeat(rows, 1)


def unet_conditioning(
    base: "BaseModel", prompts: Sequence[str], device: torch.device, size: tuple[int, int]
) -> tuple[torch.Tensor, Optional[dict[str, torch.Tensor]]]:
    """(encoder_hidden_states, added_cond_kwargs or None) for `prompts`; `size` is the image (h, w) in pixels."""
    text = encode_text(base, prompts, device)
    if text.pooled is None:
        return text.embeds, None
    time_ids = sdxl_time_ids(*size, len(prompts), text.pooled.dtype, device)
    return text.embeds, {"text_embeds": text.pooled, "time_ids": time_ids}


def warn_if_cut(base: "BaseModel", prompt: str, log: Callable[[str], None]) -> None:
    """Report through `log` a prompt longer than a tokenizer's window, naming the words that are dropped."""
    for slot in base.text:
        tokenizer = slot.tokenizer
        full = tokenizer(prompt, add_special_tokens=False).input_ids
        kept = tokenizer.model_max_length - 2  # start and end tokens
        if len(full) > kept:
            log(f"prompt cut to {tokenizer.model_max_length} tokens; dropped: {tokenizer.decode(full[kept:])!r}")


def encode_prompt(base: "BaseModel", prompt: str, log: Callable[[str], None] = lambda m: None) -> TextConditioning:
    """One prompt's conditioning [1, …] in the base's dtype; a prompt that is cut is reported through `log`."""
    warn_if_cut(base, prompt, log)
    text = encode_text(base, [prompt])
    return TextConditioning(text.embeds.to(base.dtype), None if text.pooled is None else text.pooled.to(base.dtype))


def encode_negative(base: "BaseModel", negative: str, positive: TextConditioning,
                    log: Callable[[str], None] = lambda m: None) -> TextConditioning:
    """The negative prompt's conditioning; for SDXL an empty one is all zeros, like diffusers' SDXL pipeline
    (the SDXL base model's `force_zeros_for_empty_prompt`)."""
    if base.family == "sdxl" and not negative:
        return positive.zeros()
    return encode_prompt(base, negative, log)
