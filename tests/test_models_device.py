"""Device and dtype choice: CUDA bf16 (fp16 without bf16), MPS fp16, CPU fp32; clear errors for absent devices."""

from __future__ import annotations

import contextlib

import pytest
import torch

from clif_core.errors import ClifError
from clif_core.models import device as device_mod
from clif_core.models.device import pick_device_and_dtype


def _fake_cuda(monkeypatch, bf16: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())


def test_cpu_only_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: False)
    assert pick_device_and_dtype() == (torch.device("cpu"), torch.float32)
    assert pick_device_and_dtype("cpu") == (torch.device("cpu"), torch.float32)
    with pytest.raises(ClifError, match="CUDA is not available"):
        pick_device_and_dtype("cuda")
    with pytest.raises(ClifError, match="MPS is not available"):
        pick_device_and_dtype("mps")
    with pytest.raises(ClifError, match="not a device name"):
        pick_device_and_dtype("gpu0")


@pytest.mark.parametrize("bf16,dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_prefers_bf16(monkeypatch, bf16, dtype):
    _fake_cuda(monkeypatch, bf16)
    assert pick_device_and_dtype() == (torch.device("cuda"), dtype)
    assert pick_device_and_dtype("cuda:1") == (torch.device("cuda:1"), dtype)
    assert pick_device_and_dtype("cpu") == (torch.device("cpu"), torch.float32)


def test_mps_uses_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_mod, "_mps_available", lambda: True)
    assert pick_device_and_dtype() == (torch.device("mps"), torch.float16)
