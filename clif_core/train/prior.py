"""Images made by the base model itself: class images for prior preservation, and training previews.

`pipeline_generate` wraps the base model's current components in a stock diffusers pipeline, so a preview
made while training shows the concept tokens and LoRA being trained. Prompts are given with their plain
placeholders ("<alice>"): diffusers pipelines expand multi-vector tokens themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from clif_core.augment.common import PROMPT_TEMPLATE, CommonConcept, resolve_common
from clif_core.progress import SILENT, Reporter

CLASS_PROMPT = PROMPT_TEMPLATE  # "a photo of {word}": the caption class images are trained with


def make_pipeline(base: Any, scheduler: Any = None) -> Any:
    """A diffusers text-to-image pipeline over `base`'s components (shared, not copied)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = scheduler or base.scheduler
    if base.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, text_encoder_2=base.text[1].encoder,
            tokenizer=base.text[0].tokenizer, tokenizer_2=base.text[1].tokenizer, unet=base.unet, scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer, unet=base.unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_generate(base: Any, steps: int = 25, guidance: float = 7.5) -> Callable[[str, int, int], list]:
    """`generate(prompt, n, seed) -> n PIL images` from the base model as it is when called."""

    def generate(prompt: str, n: int, seed: int) -> list:
        pipe = make_pipeline(base)
        with torch.no_grad():
            return pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, guidance_scale=guidance,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images

    return generate


def class_images(
    base: Any,
    class_words: Sequence[str],
    n: int,
    seed: int,
    cache_dir: Path,
    folder: Optional[Path] = None,
    generate: Optional[Callable[[str, int, int], list]] = None,
    reporter: Reporter = SILENT,
) -> list[CommonConcept]:
    """`n` pictures per class word, from `folder/<word>/` when there, else generated once (cached under a key of
    the base model's fingerprint, prompt, count and seed), the way augmentation gets its common concepts."""
    return resolve_common(
        class_words, folder=folder, generate=generate, fingerprint=base.fingerprint, cache_dir=cache_dir, n=n,
        seed=seed, reporter=reporter,
    )
