"""The VAE ceiling: how often the oracle reads a scene right after it went through the VAE and back.

Every image the base model draws is decoded by its VAE, so no UNet can be scored higher than the oracle
scores the VAE's reconstructions of real renders. Measured on fresh renders (seeds no training used), beside
the oracle's score on the renders themselves (its own ceiling).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from clif_core.sandbox.oracle import Oracle, scene_correct
from clif_core.sandbox.oracle_train import (
    EVAL_SEED_BASE,
    RenderedSet,
    evaluate,
    render_set,
)
from clif_core.sandbox.prompt_following import PROMPT_SETS

CEILING_SEED_BASE = EVAL_SEED_BASE + 60_000_000


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor, chunk: int = 200) -> torch.Tensor:
    """uint8 [N, 3, 64, 64] → the VAE's reconstruction from the posterior mean, uint8 [N, 3, 64, 64]."""
    param = next(vae.parameters())
    out = []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(param.device, param.dtype) / 127.5 - 1
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)


def _fully_correct(oracle: Oracle, data: RenderedSet) -> float:
    """Share of `data` the oracle reads right on every captioned attribute (the uncaptioned detail ignored)."""
    readings = oracle.read(data.images.permute(0, 2, 3, 1).numpy())
    return round(sum(scene_correct(s, r) for s, r in zip(data.scenes, readings)) / len(readings), 4)


def _scores(oracle: Oracle, data: RenderedSet) -> dict:
    result = evaluate(oracle, data=data)
    return {
        "scene": _fully_correct(oracle, data),
        "scene_with_detail": result["scene_exact"],
        "heads": {k: v["accuracy"] for k, v in result["heads"].items()},
    }


def per_prompt_set(vae: Any, oracle: Oracle, n: int, workers: int = 1, seed_base: int = CEILING_SEED_BASE) -> dict:
    """The ceiling of each prompt set that `prompt_following` scores (one object, two objects, figures): the
    share of `n` renders of that set's scenes the oracle reads fully right, before and after the VAE.

    The whole-scene figure mixes the sets in the world's proportions; the targets are per set, and small
    parts (heads, accessories) only matter to the figures' set."""
    out = {}
    for k, (name, cfg) in enumerate(PROMPT_SETS.items()):
        clean = render_set(seed_base + 1_000_000 * (k + 1), n, cfg, workers=workers)
        recon = replace(clean, images=reconstruct(vae, clean.images))
        out[name] = {"clean": _fully_correct(oracle, clean), "reconstructed": _fully_correct(oracle, recon)}
    return out


def vae_ceiling(
    vae: Any,
    oracle: Optional[Oracle] = None,
    n: int = 1000,
    workers: int = 1,
    seed_base: int = CEILING_SEED_BASE,
    n_per_set: int = 0,
) -> dict:
    """Oracle scores of `n` fresh renders and of their reconstructions; `ratio` = reconstructed / clean
    whole-scene accuracy (captioned attributes; `scene_with_detail` also requires the uncaptioned detail).
    With `n_per_set` > 0 also `per_set`: the same for each prompt set (`per_prompt_set`)."""
    oracle = oracle or Oracle.load()
    clean = render_set(seed_base, n, workers=workers)
    recon = replace(clean, images=reconstruct(vae, clean.images))
    a, b = _scores(oracle, clean), _scores(oracle, recon)
    out = {"renders": n, "clean": a, "reconstructed": b, "ratio": round(b["scene"] / max(a["scene"], 1e-9), 4)}
    if n_per_set > 0:
        out["per_set"] = per_prompt_set(vae, oracle, n_per_set, workers=workers, seed_base=seed_base)
    return out
