"""Purification: take the erased concept out of a real image while keeping its layout.

The image is encoded by the VAE, inverted with DDIM under the **original** model (conditioned on `prompt`,
by default the patch's erased targets) for `strength`·`steps` steps, then regenerated from there with DDIM
under the **erased** model (base + patch) with the same prompt. What the erased model now does with the
prompt (draw the alternative, or nothing in particular) replaces the concept; the inverted noise keeps the
composition. Guidance 1 (the conditional prediction alone) keeps DDIM inversion close to exact, which is
why it is the default.

The model works on sides that are multiples of 8 × the VAE factor (64 px for SD): the image is resized to
the nearest such size for the round trip and the result resized back, so it has the input's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.file_format import ConceptFile
from clif_core.errors import ClifError
from clif_core.images import check_min_side
from clif_core.models.denoise import ddim_scheduler, denoise
from clif_core.models.vae import decode_latents, encode_image, vae_factor
from clif_core.progress import SILENT, Reporter
from clif_core.validation import MAX_GUIDANCE, check_number, check_whole

from .conditioning import NULL, PromptTable, encode_prompts, mixed_autocast, unet_predict
from .patch import check_is_patch, check_patch_base

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


def model_size(base: BaseModel, width: int, height: int) -> tuple[int, int]:
    """(width, height) rounded to the nearest sides the model takes."""
    step = 8 * vae_factor(base)
    return tuple(max(step, round(side / step) * step) for side in (width, height))


def _model(base: BaseModel, table: PromptTable, guided: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The UNet under the table's prompt 1, with the unconditional rows first when `guided`."""
    rows = torch.tensor([NULL, 1] if guided else [1])
    return lambda x, t: unet_predict(base, table, x, t, rows)


@torch.no_grad()
def purify(
    base: BaseModel,
    patch: ConceptFile,
    image: Any,
    prompt: Optional[str] = None,
    steps: int = 50,
    strength: float = 1.0,
    guidance_scale: float = 1.0,
    patch_strength: float = 1.0,
    allow_other_base: bool = False,
    reporter: Reporter = SILENT,
) -> Any:
    """The purified PIL image, the same size as `image` (see the module docstring)."""
    check_is_patch(patch, f"erasure patch {patch.display_title()!r}")
    check_patch_base(patch, base, allow_other_base, warn=reporter.log)
    check_whole(steps, "purify steps", 1, 1000)
    if not 0 < check_number(strength, "purify strength", 0, 1):
        raise ClifError(f"purify strength {strength} must be above 0 and at most 1 (1 inverts all the way to noise)")
    check_number(guidance_scale, "purify guidance_scale", 0, MAX_GUIDANCE)
    check_min_side(image.size, "the picture to purify")
    if prompt is None or not prompt.strip():
        prompt = ", ".join(target for target, _ in patch.erased_pairs())
    original_size = image.size
    width, height = model_size(base, *original_size)
    from PIL import Image

    fitted = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    table = encode_prompts(base, ["", prompt], (height, width))
    k = max(1, round(strength * steps))
    done = 0

    def tick(*_: Any) -> None:
        nonlocal done
        reporter.check_cancel()
        done += 1
        reporter.progress(done, 2 * k, None)

    guided = guidance_scale != 1.0  # 1: the conditional prediction alone, one UNet row per step
    model, scale = _model(base, table, guided), guidance_scale if guided else None
    with mixed_autocast(base):
        x = encode_image(base, fitted)
        inverse = ddim_scheduler(base, inverse=True)
        inverse.set_timesteps(steps)
        x = denoise(inverse, model, x, scale, inverse.timesteps[:k], callback=tick)
        forward = ddim_scheduler(base)
        forward.set_timesteps(steps)
        with apply_concepts(base, [(patch, patch_strength)], warn=lambda m: None):
            x = denoise(forward, model, x, scale, forward.timesteps[steps - k:], callback=tick)
        [result] = decode_latents(base, x)
    return result.resize(original_size, Image.Resampling.LANCZOS)
