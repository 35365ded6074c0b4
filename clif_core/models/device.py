"""Choosing where the model runs and in what precision."""

from __future__ import annotations

from typing import Optional, Union

import torch

from clif_core.errors import ClifError


def pick_device_and_dtype(prefer: Optional[Union[str, torch.device]] = None) -> tuple[torch.device, torch.dtype]:
    """The device to use and its working dtype: CUDA with bf16 (fp16 where bf16 is unsupported), Apple MPS
    with fp16, otherwise CPU with fp32 (half precision on CPU is slow and loses accuracy for no gain).

    `prefer` ("cuda", "cuda:1", "mps", "cpu" or a torch.device) picks the device; None picks the best present.
    """
    if prefer is None:
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        try:
            device = torch.device(prefer)
        except (RuntimeError, TypeError):
            raise ClifError(f"device {prefer!r} is not a device name; use 'cuda', 'cuda:N', 'mps' or 'cpu'") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ClifError(f"device {prefer!r} was asked for but CUDA is not available here; use 'cpu'")
        if device.type == "mps" and not _mps_available():
            raise ClifError(f"device {prefer!r} was asked for but Apple MPS is not available here; use 'cpu'")
    return device, default_dtype(device)


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
