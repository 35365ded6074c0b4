"""Pixels in and out of latent space through a base model's VAE, one rule for every part of the pack.

Upcast rule, as diffusers' pipelines do it: an SDXL VAE loaded in float16 whose config says
`force_upcast` runs in float32 for the call (it overflows in fp16), then goes back to float16 (exact). SD1.x
and SD2.x VAEs run in the dtype they were loaded in, as their pipelines run them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

if TYPE_CHECKING:
    from .base import BaseModel


def vae_factor(base: "BaseModel") -> int:
    """How many pixels one latent pixel covers along each side (8 for published SD models, 2 for the tiny)."""
    return 2 ** (len(base.vae.config.block_out_channels) - 1)


def native_resolution(base: "BaseModel") -> int:
    """The image size the model was made for: UNet sample size × the VAE's downscale factor."""
    return int(base.unet.config.sample_size) * vae_factor(base)


def needs_upcast(base: "BaseModel") -> bool:
    vae = base.vae
    return base.family == "sdxl" and vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


@contextlib.contextmanager
def vae_precision(base: "BaseModel") -> Iterator[Any]:
    """The VAE in the dtype it runs in (module docstring), restored afterwards, also on errors."""
    upcast = needs_upcast(base)
    if upcast:
        base.vae.to(torch.float32)
    try:
        yield base.vae
    finally:
        if upcast:
            base.vae.to(torch.float16)  # fp16 → fp32 → fp16 is exact


@torch.no_grad()
def encode_pixels(base: "BaseModel", images: Sequence[torch.Tensor], batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent mean and standard deviation (unscaled, float32) of images [3, H, W] in 0..1."""
    with vae_precision(base) as vae:
        means, stds = [], []
        for start in range(0, len(images), batch):
            x = torch.stack(list(images[start : start + batch])).to(base.device, vae.dtype) * 2 - 1
            dist = vae.encode(x).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_image(base: "BaseModel", image: Any) -> torch.Tensor:
    """A PIL image (its size already fitting the model) → [1, C, h, w] float32 scaled latents (the posterior
    mean, so the same image always gives the same latents)."""
    import numpy as np

    with vae_precision(base) as vae:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None].to(base.device, vae.dtype)
        return (vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor).float()


@torch.no_grad()
def decode_latents(base: "BaseModel", latents: torch.Tensor) -> list:
    """Scaled latents [B, C, h, w] → PIL images, one image at a time (lower peak memory), as diffusers'
    pipelines decode them (their `latents_mean`/`latents_std` where the VAE config has them)."""
    from diffusers.image_processor import VaeImageProcessor

    cfg = base.vae.config
    processor = VaeImageProcessor(vae_scale_factor=vae_factor(base))
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    images = []
    with vae_precision(base) as vae:
        for one in latents.split(1):
            one = one.to(base.device, vae.dtype)
            if mean is not None and std is not None:
                std_t, mean_t = (torch.tensor(v).view(1, -1, 1, 1).to(one) for v in (std, mean))
                one = one * std_t / cfg.scaling_factor + mean_t
            else:
                one = one / cfg.scaling_factor
            pixels = vae.decode(one, return_dict=False)[0]
            images += processor.postprocess(pixels, output_type="pil")
    return images
