"""What an erasure changed, measured on fixed pool points x_t against the frozen predictions stored there.

All numbers are ratios of Frobenius norms over the evaluated entries (so 0 means "unchanged" for drifts):
    uncond_drift      ‖ε(x_t,∅) − ε*(x_t,∅)‖ / ‖ε*(x_t,∅)‖          the paper's model-preservation claim
    target_shift      ‖ε(x_t,c_e) − ε*(x_t,c_e)‖ / ‖ε*(x_t,c_e)‖    how much the erased prompt changed
    guidance_to_goal  ‖g(c_e) − g_tgt‖ / ‖g*(c_e) − g_tgt‖             1 before erasing, 0 at the goal, where
                      g(c) = ε(x_t,c) − ε(x_t,∅) and g_tgt is All-but-One's target guidance (toward the
                      alternative, or zero without one)
    preserve_drift    ‖ε(x_t,c_p) − ε*(x_t,c_p)‖ / ‖ε*(x_t,c_p)‖    (only with preservation prompts)
ε is the model as it is when called (apply a patch first), ε* the frozen model's stored predictions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

from .conditioning import NULL, PromptTable, batched, mixed_autocast, unet_predict
from .objectives import target_guidance
from .pool import XtPool

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

EVAL_ENTRIES = 64
EVAL_BATCH = 8


def eval_indices(pool: XtPool, n: int = EVAL_ENTRIES) -> list[int]:
    """Up to `n` entries spread evenly over the pool (every concept, every noise level)."""
    total = len(pool)
    return list(range(total)) if total <= n else [i * total // n for i in range(n)]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


@torch.no_grad()
def erasure_metrics(base: BaseModel, table: PromptTable, pool: XtPool, eta: float = 1.0, negative_eta: float = 0.0,
                    indices: Optional[Sequence[int]] = None) -> dict[str, float]:
    indices = eval_indices(pool) if indices is None else list(indices)
    sums = {k: 0.0 for k in ("null_d", "null", "tgt_d", "tgt", "goal_d", "goal_0", "keep_d", "keep")}
    has_keep = bool((pool.keep >= 0).any())
    with mixed_autocast(base):
        for part in batched(len(indices), EVAL_BATCH):
            e = pool.select(indices[part])
            n = len(e["t"])
            rows = [torch.full((n,), NULL), e["target"]] + ([e["keep"]] if has_keep else [])
            out = unet_predict(base, table, e["x"].repeat(len(rows), 1, 1, 1), e["t"].repeat(len(rows)),
                               torch.cat(rows)).cpu().chunk(len(rows))
            goal = target_guidance(e["eps_null"], e["eps_target"], e["eps_alt"], e["alt"] >= 0, eta, negative_eta)
            sums["null_d"] += float((out[0] - e["eps_null"]).square().sum())
            sums["null"] += float(e["eps_null"].square().sum())
            sums["tgt_d"] += float((out[1] - e["eps_target"]).square().sum())
            sums["tgt"] += float(e["eps_target"].square().sum())
            sums["goal_d"] += float((out[1] - out[0] - goal).square().sum())
            sums["goal_0"] += float((e["eps_target"] - e["eps_null"] - goal).square().sum())
            if has_keep:
                sums["keep_d"] += float((out[2] - e["eps_keep"]).square().sum())
                sums["keep"] += float(e["eps_keep"].square().sum())
    metrics = {
        "uncond_drift": _ratio(sums["null_d"], sums["null"]) ** 0.5,
        "target_shift": _ratio(sums["tgt_d"], sums["tgt"]) ** 0.5,
        "guidance_to_goal": _ratio(sums["goal_d"], sums["goal_0"]) ** 0.5,
    }
    if has_keep:
        metrics["preserve_drift"] = _ratio(sums["keep_d"], sums["keep"]) ** 0.5
    return metrics
