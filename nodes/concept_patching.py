"""Apply a concept file to ComfyUI's own MODEL and CLIP without editing anything in place.

LoRA weights go through ComfyUI's own LoRA loader (`comfy.sd.load_lora_for_models`: clone +
add_patches). Token embeddings are injected by giving the cloned CLIP its own tokenizer copy that
rewrites the concept placeholders ("<alice>") to `embedding:<alice>` words and resolves those to the
concept vectors in memory (comfy_compat.with_memory_embeddings: ComfyUI's `embedding:` route, minus the
file).
"""

from __future__ import annotations

import re
from typing import Callable

import torch


def _rewriter(previous: Callable, tokens: list[str]) -> Callable:
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))

    def tokenize_with_weights(text: str, return_word_ids: bool = False, **kwargs):
        text = pattern.sub(lambda m: f" embedding:{m.group(0)} ", text)
        return previous(text, return_word_ids, **kwargs)

    return tokenize_with_weights


def patch_clip_tokens(clip, embeddings: dict[str, dict[str, torch.Tensor]]):
    """Return a clone of `clip` whose prompts understand the concept placeholders.

    `embeddings` maps placeholder token → {encoder name ("clip_l", "clip_g", "clip_h") → [k, width]}.
    """
    from .comfy_compat import with_memory_embeddings

    patched = clip.clone()
    tokenizer = with_memory_embeddings(clip.tokenizer, embeddings)
    tokenizer.tokenize_with_weights = _rewriter(tokenizer.tokenize_with_weights, list(embeddings))
    patched.tokenizer = tokenizer
    return patched


def apply_concept_file(model, clip, concept_file, strength_model: float, strength_clip: float):
    """(MODEL, CLIP) with the concept file's LoRA and token embeddings applied; inputs are untouched."""
    import comfy.sd

    from clif_core.concepts.checks import validate
    from clif_core.validation import check_strength

    where = f"concept file {concept_file.display_title()!r}"
    validate(concept_file, where)
    check_strength(strength_model, f"strength_model of {where}")
    check_strength(strength_clip, f"strength_clip of {where}")
    lora = {**concept_file.unet_lora, **concept_file.text_lora}
    if lora and (strength_model != 0 or strength_clip != 0):
        model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
    if clip is not None and concept_file.concepts:
        clip = patch_clip_tokens(clip, {c.token: c.embeddings for c in concept_file.concepts})
    return model, clip
