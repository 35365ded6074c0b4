"""The three pretraining stages' losses, one call per optimizer step, written for the CPU as much as the GPU.

Each builder returns `loss(idx, gen=None) -> scalar` over the batch `idx` of the pre-rendered `WorldSet`,
drawing its noise from `gen` (the global generator when None: the shared training loop seeds that per step),
so the training loop and `benchmarks/pretrain_cpu.py` time the very same step. What makes them cheap:

- **UNet**: the text encoder is frozen in this stage, so its output for every training caption is computed
  once (`text_contexts`) and looked up per step instead of re-running the encoder on 64 × 77 tokens; the
  VAE's latent moments are likewise computed once (`latent_moments`).
- **CLIP**: captions are padded with end-of-text tokens and the text encoder is causal with the pooled
  output taken at the first end-of-text token, so the tokens after the batch's longest caption cannot
  change the loss; they are cut off (about 77 → 40 positions).

`random_batches` steps a loss outside the loop (benchmarks, tests): a batch drawn with the generator first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from clif_core.sandbox.pretrain_data import WorldSet
from clif_core.training.losses import info_nce, min_snr_weight

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EOS_ID = 49407

Loss = Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


def random_batches(loss: Loss, n: int, batch_size: int) -> Callable[[torch.Generator], torch.Tensor]:
    """`loss` over `batch_size` of the `n` samples drawn uniformly with `gen`, then its noise from `gen`."""
    return lambda gen: loss(torch.randint(n, (batch_size,), generator=gen, device=gen.device), gen)


def pixels(world: WorldSet, idx: torch.Tensor) -> torch.Tensor:
    """uint8 images → float pixels in [-1, 1]."""
    return world.images[idx].float() / 127.5 - 1.0


def caption_variant(n: int, p_background: float, gen: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """Per image, 0 (caption naming the background) or 1 (without), the first with probability `p_background`."""
    return (torch.rand(n, generator=gen, device=device) >= p_background).long()


def normalise_for_vision(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels → CLIP's normalisation (what CLIPImageProcessor gives for a 64×64 image)."""
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def trim_padding(ids: torch.Tensor) -> torch.Tensor:
    """Cut end-of-text padding after the longest caption of the batch (its first end-of-text token kept)."""
    first_eos = (ids == EOS_ID).int().argmax(dim=-1)
    return ids[:, : int(first_eos.max()) + 1]


@dataclass(frozen=True)
class VaeObjective:
    """What the VAE's reconstruction loss weighs besides plain L1 (measured in docs/sandbox.md, "the ceiling").

    Plain L1 over the whole image spends the small VAE on the large, easy background and blurs what the
    oracle must read back. `object_weight` counts object pixels (1 + w)× the background's; `gradient_weight`
    adds L1 between the images' finite differences (edges, small parts); `spectrum_weight` adds L1 between
    the amplitude spectra of 8×8 patches, which asks for a texture's frequencies whatever its phase (stripes
    shifted by a pixel cost nothing there, where L1 prefers a blur); `sample_posterior` decodes a sampled
    latent (as Stable Diffusion's VAE trains) instead of the posterior mean."""

    object_weight: float = 0.0
    gradient_weight: float = 0.0
    spectrum_weight: float = 0.0
    sample_posterior: bool = True


def _patch_spectrum(x: torch.Tensor, patch: int = 8) -> torch.Tensor:
    tiles = x.unfold(2, patch, patch).unfold(3, patch, patch)
    return torch.fft.rfft2(tiles, norm="ortho").abs()


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, objects: torch.Tensor, objective: VaeObjective) -> torch.Tensor:
    weight = 1.0 + objective.object_weight * objects[:, None].float()
    loss = ((recon - x).abs() * weight).mean() / weight.mean()
    if objective.gradient_weight:
        loss = loss + objective.gradient_weight * (
            F.l1_loss(recon.diff(dim=2), x.diff(dim=2)) + F.l1_loss(recon.diff(dim=3), x.diff(dim=3))
        )
    if objective.spectrum_weight:
        loss = loss + objective.spectrum_weight * F.l1_loss(_patch_spectrum(recon), _patch_spectrum(x))
    return loss


def vae_loss(vae: Any, world: WorldSet, kl_weight: float, objective: VaeObjective) -> Loss:
    """The objective's reconstruction loss + a small KL term."""

    def loss(idx: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        x = pixels(world, idx)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean
        if objective.sample_posterior:
            z = z + posterior.std * torch.randn(posterior.mean.shape, generator=gen, device=z.device)
        recon = vae.decode(z).sample.float()
        return reconstruction_loss(recon, x, world.objects[idx], objective) + kl_weight * posterior.kl().mean()

    return loss


def clip_loss(text: Any, vision: Any, logit_scale: torch.Tensor, world: WorldSet, p_background: float) -> Loss:
    """Symmetric InfoNCE; each image also scores its hard-negative caption (objects swapped, an attribute changed)."""

    def loss(idx: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        variant = caption_variant(len(idx), p_background, gen, idx.device)
        ids = trim_padding(torch.cat([world.ids[idx, variant], world.negative_ids[idx, variant]]))
        texts = text(input_ids=ids).pooler_output
        images = vision(pixel_values=normalise_for_vision(pixels(world, idx))).image_embeds
        scale = logit_scale.clamp(max=math.log(100.0)).exp()
        b = len(idx)
        keys = [tuple(row) for row in ids[:b].tolist()]  # the same caption twice in a batch: positives of each other
        return info_nce(images, texts[:b], keys, scale, negatives=texts[b:])

    return loss


@torch.no_grad()
def text_contexts(text: Any, world: WorldSet, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text encoder's last hidden state for every caption variant, [N, 2, 77, W], and for the
    empty prompt, [77, W]."""
    n = len(world)
    flat = world.ids.view(n * 2, -1)
    out = torch.cat([text(input_ids=flat[i : i + chunk]).last_hidden_state for i in range(0, len(flat), chunk)])
    empty = text(input_ids=world.empty_ids[None]).last_hidden_state[0]
    return out.view(n, 2, *out.shape[1:]), empty


@torch.no_grad()
def latent_moments(vae: Any, world: WorldSet, chunk: int = 512) -> torch.Tensor:
    """The VAE posterior's mean and log-variance of every training image, [N, 8, 16, 16] float16."""
    out = []
    for i in range(0, len(world), chunk):
        idx = torch.arange(i, min(i + chunk, len(world)), device=world.images.device)
        out.append(vae.encode(pixels(world, idx)).latent_dist.parameters.half())
    return torch.cat(out)


def unet_loss(
    unet: Any,
    noise_schedule: Any,
    moments: torch.Tensor,
    contexts: tuple[torch.Tensor, torch.Tensor],
    scaling_factor: float,
    p_background: float,
    text_dropout: float,
    min_snr_gamma: float,
) -> Loss:
    """v-prediction with min-SNR-γ weighting; `text_dropout` of the captions replaced by the empty prompt."""
    captions, empty = contexts
    n_timesteps = noise_schedule.config.num_train_timesteps

    def loss(idx: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        b, device = len(idx), idx.device
        mean, logvar = moments[idx].float().chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=gen, device=device)
        latents = (mean + torch.exp(0.5 * logvar) * eps) * scaling_factor
        variant = caption_variant(b, p_background, gen, device)
        drop = torch.rand(b, generator=gen, device=device) < text_dropout
        context = torch.where(drop[:, None, None], empty[None], captions[idx, variant])
        steps = torch.randint(0, n_timesteps, (b,), generator=gen, device=device)
        noise = torch.randn(latents.shape, generator=gen, device=device)
        noisy = noise_schedule.add_noise(latents, noise, steps)
        target = noise_schedule.get_velocity(latents, noise, steps)
        pred = unet(noisy, steps, encoder_hidden_states=context).sample.float()
        weight = min_snr_weight(noise_schedule, steps, min_snr_gamma, "v_prediction")
        return (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()

    return loss
