"""Images made by the base model itself: class images for prior preservation.

Class images are drawn by the pack's sampler (`clif_core.sample.sampler.make_generate`) before any concept
is applied, and cached like augmentation's common-concept pictures. (Previews while training: leakage.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from clif_core.augment.common_concepts import PROMPT_TEMPLATE, CommonConcept, resolve_common
from clif_core.progress import SILENT, Reporter

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

CLASS_PROMPT = PROMPT_TEMPLATE  # "a photo of {word}": the caption class images are trained with

GenerateFn = Callable[[str, int, int], list]


def class_images(
    base: BaseModel,
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
