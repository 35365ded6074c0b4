"""Losses every trainer shares: the contrastive loss and the min-SNR weighting.

CLIF's stage 1 and the sandbox's CLIP stage both train with this InfoNCE; CLIF's stage 2 and the sandbox's
UNet stage both weigh their denoising loss with this min-SNR rule, so a fix to either reaches every trainer.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F


def info_nce(
    image: torch.Tensor,
    text: torch.Tensor,
    keys: Sequence[Hashable],
    scale: torch.Tensor,
    negatives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on L2-normalised features; pairs with equal `keys` (their captions) are positives of
    each other. `negatives`: more text features that every image also scores, as wrong answers only (hard
    negatives: a caption with its objects swapped or an attribute changed); they take no part in the
    text → image direction."""
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    logits = scale.float() * image @ text.T
    same = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32, device=logits.device)
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
    image_logits, image_targets = logits, targets
    if negatives is not None:
        negatives = F.normalize(negatives.float(), dim=-1)
        image_logits = torch.cat([logits, scale.float() * image @ negatives.T], dim=1)
        image_targets = F.pad(targets, (0, len(negatives)))
    return 0.5 * (F.cross_entropy(image_logits, image_targets) + F.cross_entropy(logits.T, targets))


def min_snr_weight(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample weight of the min-SNR-γ strategy (Hang et al., 2023), so that every prediction type's loss
    weighs a timestep as its x₀ error times min(SNR, γ): min(SNR, γ) / SNR for ε-prediction,
    min(SNR, γ) / (SNR + 1) for v-prediction, min(SNR, γ) for x₀ ("sample") prediction."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped if prediction_type == "sample" else clipped / snr
