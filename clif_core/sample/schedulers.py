"""Sampling schedulers, each a diffusers scheduler built from the base model's own scheduler config.

Starting from the base config keeps the model's noise schedule (betas, timestep spacing, steps offset) and its
prediction type (epsilon or v), so a name only changes the solver.
"""

from __future__ import annotations

from typing import Any

from clif_core.errors import ClifError

from .config import SCHEDULERS

_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}
assert tuple(_CLASSES) == SCHEDULERS

LABELS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
}
"""The names other tools (A1111 "Sampler:" lines) use for these schedulers."""


def make_scheduler(base_config: Any, name: str) -> Any:
    """A fresh scheduler `name` (one of SCHEDULERS) from `base_config` (the base model's scheduler config)."""
    import diffusers

    if name not in _CLASSES:
        raise ClifError(f"scheduler {name!r} is not supported; use one of {', '.join(SCHEDULERS)}")
    class_name, overrides = _CLASSES[name]
    return getattr(diffusers, class_name).from_config(dict(base_config), **overrides)
