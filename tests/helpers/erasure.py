"""Erasure settings small enough for the tiny models to run in seconds."""

from __future__ import annotations

from clif_core.erase.config import EraseConfig, EraseTarget
from clif_core.training.loop import LoopConfig

RESOLUTION = 32  # the tiny VAE halves: 16×16 latents keep the runs to seconds


def tiny_config(method: str, params: str, targets=None, preserve=(), steps: int = 20, **kw) -> EraseConfig:
    return EraseConfig(
        targets=targets or [EraseTarget("a photo of a pig", "a photo of a cow")], preserve=list(preserve),
        method=method, params=params, lr=1e-3, trajectories=1, sample_steps=6, resolution=RESOLUTION,
        loop=LoopConfig(steps=steps, batch_size=2, checkpoint_every=5, preview_every=0, log_every=0), **kw)
