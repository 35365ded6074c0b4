"""Training-stage settings small enough for the tiny models on CPU."""

from __future__ import annotations

from clif_core.train.decoder import DecoderConfig
from clif_core.training.loop import LoopConfig


def stage2_config(steps=20, **kw) -> DecoderConfig:
    loop = LoopConfig(steps=steps, batch_size=2, checkpoint_every=kw.pop("checkpoint_every", 10), log_every=0,
                      preview_every=kw.pop("preview_every", 0), seed=0, max_grad_norm=kw.pop("max_grad_norm", 1.0),
                      gradient_checkpointing=kw.pop("gradient_checkpointing", False))
    base = dict(lora_rank=4, lr=kw.pop("lr", 3e-2), token_lr=1e-2, preview_steps=0, loop=loop)
    base.update(kw)
    return DecoderConfig(**base)
