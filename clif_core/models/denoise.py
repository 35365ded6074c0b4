"""Denoising with classifier-free guidance, in the k-diffusion style: a model callable, a step, a callback.

The caller owns the conditioning: `model(x, t)` returns the UNet's prediction for a batch of latents. Under
guidance the batch holds the unconditional rows first and the conditional rows second (`x` twice), and the
model conditions each half accordingly; without guidance (`scale` None) it is the conditional rows alone.
The sampler, erasure's previews and x_t pool, and purification all step through here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

if TYPE_CHECKING:
    from .base import BaseModel

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""model(x, t) -> prediction (ε or v, the base's prediction type) for latents `x` at timestep `t`."""
Callback = Callable[[int, torch.Tensor, Any], None]
"""callback(i, t, scheduler output) after step i: `.prev_sample` and, where the solver has it,
`.pred_original_sample` (the denoised estimate)."""


def ddim_scheduler(base: "BaseModel", inverse: bool = False) -> Any:
    """DDIM (or diffusers' DDIM inversion) on the base's noise schedule and prediction type (ε or v)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    config = dict(base.scheduler.config)
    if config.get("timestep_spacing", "leading") not in ("leading", "trailing"):
        config["timestep_spacing"] = "leading"  # DDIM inversion knows only these two
    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    return cls.from_config(config, clip_sample=False, set_alpha_to_one=False)


def guided_prediction(model: Model, x: torch.Tensor, t: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    """uncond + scale·(cond − uncond) from one model call on [x; x]; `scale` None: the conditional call alone."""
    if scale is None:
        return model(x, t)
    uncond, cond = model(torch.cat([x, x]), t).chunk(2)
    return uncond + scale * (cond - uncond)


def denoise_step(scheduler: Any, model: Model, x: torch.Tensor, t: torch.Tensor, scale: Optional[float],
                 **step_kwargs: Any) -> Any:
    """One scheduler step from `x` at `t` with the guided prediction; returns the scheduler's output."""
    prediction = guided_prediction(model, scheduler.scale_model_input(x, t), t, scale)
    return scheduler.step(prediction, t, x, **step_kwargs)


def denoise(scheduler: Any, model: Model, x: torch.Tensor, scale: Optional[float],
            timesteps: Optional[Sequence[torch.Tensor]] = None, callback: Optional[Callback] = None,
            **step_kwargs: Any) -> torch.Tensor:
    """Step `x` through `timesteps` (default: the scheduler's, already set) and return the last latents."""
    for i, t in enumerate(scheduler.timesteps if timesteps is None else timesteps):
        out = denoise_step(scheduler, model, x, t, scale, **step_kwargs)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, out)
    return x
