"""DDIM on the base's own schedule, seeded noise, and the VAE in and out of latent space."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .conditioning import NULL, PromptTable, unet_predict, vae_factor


def ddim_scheduler(base: Any, inverse: bool = False) -> Any:
    """DDIM (or diffusers' DDIM inversion) on the base's noise schedule and prediction type (ε or v)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = dict(base.scheduler.config)
    if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
        config["timestep_spacing"] = "leading"  # DDIM inversion knows only these two
    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    return cls.from_config(config, clip_sample=False, set_alpha_to_one=False)


def initial_noise(base: Any, seed: int, resolution: int) -> torch.Tensor:
    """[1, C, h, w] float32 noise from a CPU generator, so every device draws the same numbers."""
    side = resolution // vae_factor(base)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, base.unet.config.in_channels, side, side, generator=g)


@torch.no_grad()
def ddim_sample(base: Any, table: PromptTable, noise: torch.Tensor, prompts: Sequence[int], steps: int,
                guidance_scale: float) -> torch.Tensor:
    """Latents sampled from `noise` [B, C, h, w], row b under prompt index prompts[b], with CFG."""
    scheduler = ddim_scheduler(base)
    scheduler.set_timesteps(steps)
    x = noise.to(base.device, torch.float32) * scheduler.init_noise_sigma
    n = x.shape[0]
    rows = torch.tensor([NULL] * n + list(prompts))
    for t in scheduler.timesteps:
        out = unet_predict(base, table, scheduler.scale_model_input(x, t).repeat(2, 1, 1, 1), t, rows)
        uncond, cond = out.chunk(2)
        x = scheduler.step(uncond + guidance_scale * (cond - uncond), t, x).prev_sample
    return x


@torch.no_grad()
def decode(base: Any, latents: torch.Tensor) -> list[Any]:
    """Latents → PIL images."""
    from PIL import Image

    vae = base.vae
    scaled = latents.to(base.device, vae.dtype) / vae.config.scaling_factor
    images = vae.decode(scaled).sample.float().clamp(-1, 1)
    arrays = ((images.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]


@torch.no_grad()
def encode(base: Any, image: Any) -> torch.Tensor:
    """A PIL image (its size already fitting the model) → [1, C, h, w] float32 latents (the posterior mean,
    so the same image always gives the same latents)."""
    vae = base.vae
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)[None].to(base.device, vae.dtype)
    return (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).float()


def grid(images: Sequence[Any]) -> Any:
    """Images side by side (same size) as one PIL image."""
    from PIL import Image

    w, h = images[0].size
    out = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        out.paste(im, (i * w, 0))
    return out
