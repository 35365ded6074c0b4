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

from typing import Any, Optional

import torch

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.file_format import ConceptFile
from clif_core.errors import ClifError
from clif_core.images import check_min_side
from clif_core.progress import SILENT, Reporter
from clif_core.validation import MAX_GUIDANCE, check_number, check_whole

from .conditioning import NULL, PromptTable, encode_prompts, mixed_autocast, unet_predict, vae_factor
from .latents import ddim_scheduler, decode, encode
from .patch import check_is_patch, check_patch_base, erased_pairs


def model_size(base: Any, width: int, height: int) -> tuple[int, int]:
    """(width, height) rounded to the nearest sides the model takes."""
    step = 8 * vae_factor(base)
    return tuple(max(step, round(side / step) * step) for side in (width, height))


def _predict(base: Any, table: PromptTable, x: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    if guidance_scale == 1.0:
        return unet_predict(base, table, x, t, torch.tensor([1]))
    uncond, cond = unet_predict(base, table, x.repeat(2, 1, 1, 1), t, torch.tensor([NULL, 1])).chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def purify(
    base: Any,
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
        prompt = ", ".join(target for target, _ in erased_pairs(patch))
    original_size = image.size
    width, height = model_size(base, *original_size)
    from PIL import Image

    fitted = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    table = encode_prompts(base, ["", prompt], (height, width))
    k = max(1, round(strength * steps))
    done = 0

    def tick() -> None:
        nonlocal done
        reporter.check_cancel()
        done += 1
        reporter.progress(done, 2 * k, None)

    with mixed_autocast(base):
        x = encode(base, fitted)
        inverse = ddim_scheduler(base, inverse=True)
        inverse.set_timesteps(steps)
        for t in inverse.timesteps[:k]:
            x = inverse.step(_predict(base, table, x, t, guidance_scale), t, x).prev_sample
            tick()
        forward = ddim_scheduler(base)
        forward.set_timesteps(steps)
        with apply_concepts(base, [(patch, patch_strength)], warn=lambda m: None):
            for t in forward.timesteps[steps - k:]:
                x = forward.step(_predict(base, table, x, t, guidance_scale), t, x).prev_sample
                tick()
        [result] = decode(base, x)
    return result.resize(original_size, Image.Resampling.LANCZOS)
