"""Erasure's pictures: seeded noise, DDIM samples under a prompt table (previews), and a side-by-side grid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from clif_core.models.denoise import ddim_scheduler, denoise
from clif_core.models.vae import vae_factor

from .conditioning import NULL, PromptTable, unet_predict

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


def initial_noise(base: BaseModel, seed: int, resolution: int) -> torch.Tensor:
    """[1, C, h, w] float32 noise from a CPU generator, so every device draws the same numbers."""
    side = resolution // vae_factor(base)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, base.unet.config.in_channels, side, side, generator=g)


@torch.no_grad()
def ddim_sample(base: BaseModel, table: PromptTable, noise: torch.Tensor, prompts: Sequence[int], steps: int,
                guidance_scale: float) -> torch.Tensor:
    """Latents sampled from `noise` [B, C, h, w], row b under prompt index prompts[b], with CFG."""
    scheduler = ddim_scheduler(base)
    scheduler.set_timesteps(steps)
    x = noise.to(base.device, torch.float32) * scheduler.init_noise_sigma
    rows = torch.tensor([NULL] * x.shape[0] + list(prompts))
    return denoise(scheduler, lambda x_in, t: unet_predict(base, table, x_in, t, rows), x, guidance_scale)


def grid(images: Sequence[Any]) -> Any:
    """Images side by side (same size) as one PIL image."""
    from PIL import Image

    w, h = images[0].size
    out = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        out.paste(im, (i * w, 0))
    return out
