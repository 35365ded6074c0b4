"""Images made by the base model itself: class images for prior preservation, and training previews.

Class images are drawn by the pack's sampler (`clif_core.sample.sampler.make_generate`) before any concept
is applied, and cached like augmentation's common-concept pictures. Previews while training go through a
stock diffusers pipeline over the base model's current components, so they show the concept tokens and
the LoRA being trained; its prompt keeps the plain placeholders ("<alice>"), which diffusers pipelines
expand to the multi-vector tokens themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from clif_core.augment.common import PROMPT_TEMPLATE, CommonConcept, resolve_common
from clif_core.progress import SILENT, Reporter

CLASS_PROMPT = PROMPT_TEMPLATE  # "a photo of {word}": the caption class images are trained with

GenerateFn = Callable[[str, int, int], list]


def make_pipeline(base: Any) -> Any:
    """A diffusers text-to-image pipeline over `base`'s components (shared, not copied)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if base.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, text_encoder_2=base.text[1].encoder,
            tokenizer=base.text[0].tokenizer, tokenizer_2=base.text[1].tokenizer, unet=base.unet,
            scheduler=base.scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer, unet=base.unet,
            scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_images(
    base: Any,
    class_words: Sequence[str],
    n: int,
    seed: int,
    cache_dir: Path,
    steps: int,
    folder: Optional[Path] = None,
    generate: Optional[GenerateFn] = None,
    reporter: Reporter = SILENT,
) -> list[CommonConcept]:
    """`n` pictures per class word, from `folder/<word>/` when there, else generated once with `generate`
    (default: the pack's sampler on `base` with `steps` steps) and cached under a key of the base model's
    fingerprint and the sampler settings, the prompt, the count and the seed."""
    if generate is None:
        from clif_core.sample.config import SampleConfig
        from clif_core.sample.sampler import make_generate

        template = SampleConfig(prompt="", steps=steps)
        generate = make_generate(base, template, reporter=reporter)
        fingerprint = f"{base.fingerprint}/{template.scheduler}/steps={template.steps}/cfg={template.cfg}"
    else:
        fingerprint = f"{base.fingerprint}/custom"
    return resolve_common(
        class_words, folder=folder, generate=generate, fingerprint=fingerprint, cache_dir=cache_dir, n=n,
        seed=seed, reporter=reporter,
    )
