"""Copies of model weights taken before a run, to check that the run left the base model bit-identical."""

from __future__ import annotations

import torch


def snapshot_module(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `module`'s state dict."""
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    """`module` has the structure, dtypes and values of `before` (a `snapshot_module`)."""
    after = module.state_dict()
    assert sorted(after) == sorted(before), "the module's structure changed (adapters left behind?)"
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key


def snapshot_base(base) -> dict[str, torch.Tensor]:
    """A copy of a base model's UNet and text encoder weights, keyed "unet.…" and "<encoder slot>.…"."""
    state = {f"unet.{k}": v.clone() for k, v in base.unet.state_dict().items()}
    for slot in base.text:
        state.update({f"{slot.name}.{k}": v.clone() for k, v in slot.encoder.state_dict().items()})
    return state
