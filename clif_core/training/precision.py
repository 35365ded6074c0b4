"""Precision for every trainer: which mixed precision a run uses, the accelerator that applies it, and the
check that a half-precision base model is trained under autocast."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import torch

from clif_core.errors import ClifError

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

    from .loop import LoopConfig



def resolve_precision(mixed_precision: str, device: torch.device) -> str:
    if mixed_precision == "auto":
        if device.type != "cuda":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ClifError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this device")
    return mixed_precision


def distributed_launch() -> bool:
    """True inside `accelerate launch`/torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def make_accelerator(config: "LoopConfig", device: Optional[torch.device] = None) -> Any:
    """An `accelerate.Accelerator` for `config` on `device` (default: what the launch environment says).

    accelerate keeps its state in process-wide singletons that refuse a second precision; a long-lived
    single process (ComfyUI) trains many times, so that state is reset first when no launcher started us.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if not distributed_launch():
        AcceleratorState._reset_state(reset_partial_state=True)
    if device is None:  # the launcher's choice: a process per GPU, else processes on the CPU
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    precision = resolve_precision(config.mixed_precision, device)
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


def check_precision(base: "BaseModel", precision: str, doing: str = "training") -> None:
    """Frozen weights in half precision need autocast: full precision (`precision` "no") on them would mix
    dtypes. `doing` names the job in the message ("training", "erasing")."""
    if precision == "no" and base.dtype != torch.float32:
        raise ClifError(
            f"the base model is loaded in {str(base.dtype).removeprefix('torch.')}; {doing} without mixed "
            "precision needs it in float32. Choose mixed precision bf16/fp16, or load the base model in float32"
        )
