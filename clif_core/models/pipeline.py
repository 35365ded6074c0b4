"""A diffusers pipeline over a loaded base model's own components (nothing copied, no safety checker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import BaseModel


def diffusers_pipeline(base: "BaseModel") -> Any:
    """`StableDiffusionXLPipeline` for SDXL, else `StableDiffusionPipeline`, over `base`'s components, with
    its progress bar off. Used to write a model as a diffusers folder and where diffusers' own sampling is the
    reference (the sandbox's prompt-following score)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text[0].encoder,
            text_encoder_2=base.text[1].encoder,
            tokenizer=base.text[0].tokenizer,
            tokenizer_2=base.text[1].tokenizer,
            unet=base.unet,
            scheduler=base.scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae,
            text_encoder=base.text[0].encoder,
            tokenizer=base.text[0].tokenizer,
            unet=base.unet,
            scheduler=base.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
