"""The two erasure objectives on predictions (ε or v: the guidance algebra is linear, so the same on both).

Per batch, with ‖·‖² the mean of squared elements (torch's mse_loss) and ε* the frozen model's
predictions from the pool:

All-but-One
    g_θ     = ε_θ(x_t, c_e) − ε_θ(x_t, ∅)
    g_tgt   = η·(ε*(x_t, c_alt) − ε*(x_t, ∅))            with an alternative
            = −negative_eta·(ε*(x_t, c_e) − ε*(x_t, ∅))    without one (0 by default: the guidance vanishes)
    L       = ‖g_θ − g_tgt‖² + λ·‖ε_θ(x_t, ∅) − ε*(x_t, ∅)‖² [+ w_p·‖ε_θ(x_t, c_p) − ε*(x_t, c_p)‖²]

ESD (its paper's objective; it has no alternative)
    L       = ‖ε_θ(x_t, c_e) − (ε*(x_t, ∅) − η·(ε*(x_t, c_e) − ε*(x_t, ∅)))‖² [+ w_p·‖ε_θ(x_t, c_p) − ε*(x_t, c_p)‖²]
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def target_guidance(eps_null: torch.Tensor, eps_target: torch.Tensor, eps_alt: torch.Tensor,
                    has_alt: torch.Tensor, eta: float, negative_eta: float) -> torch.Tensor:
    """g_tgt per row; `has_alt` [B] bool."""
    toward_alt = eta * (eps_alt - eps_null)
    away = -negative_eta * (eps_target - eps_null)
    return torch.where(has_alt.view(-1, *[1] * (eps_null.dim() - 1)), toward_alt, away)


def all_but_one_loss(pred_target: torch.Tensor, pred_null: torch.Tensor, eps_null: torch.Tensor,
                     guidance: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parts) of All-but-One without the preservation term; `guidance` is g_tgt."""
    guide = F.mse_loss(pred_target - pred_null, guidance)
    hold = F.mse_loss(pred_null, eps_null)
    return guide + lam * hold, {"guidance": guide.detach(), "uncond": hold.detach()}


def esd_loss(pred_target: torch.Tensor, eps_null: torch.Tensor, eps_target: torch.Tensor,
             eta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, parts) of ESD without the preservation term."""
    loss = F.mse_loss(pred_target, eps_null - eta * (eps_target - eps_null))
    return loss, {"esd": loss.detach()}


def preservation_loss(pred_keep: Optional[torch.Tensor], eps_keep: torch.Tensor, weight: float) -> torch.Tensor:
    if pred_keep is None or weight == 0:
        return eps_keep.new_zeros(())
    return weight * F.mse_loss(pred_keep, eps_keep)
