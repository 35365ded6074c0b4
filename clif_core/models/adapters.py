"""peft adapters on a base model's modules (UNet, text encoders): whether there are any, and taking exactly
the named ones off again. Whoever adds an adapter owns it and removes it through here."""

from __future__ import annotations

from typing import Sequence

import torch


def has_peft(module: torch.nn.Module) -> bool:
    return bool(getattr(module, "_hf_peft_config_loaded", False)) or hasattr(module, "peft_config")


def adapter_names(module: torch.nn.Module) -> list[str]:
    return list(getattr(module, "peft_config", None) or {})


def strip_peft(module: torch.nn.Module) -> None:
    """Strip every peft layer (restoring the original modules) and the peft bookkeeping diffusers adds."""
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = None


def remove_adapters(module: torch.nn.Module, names: Sequence[str]) -> None:
    """Take the adapters `names` off `module` (names it does not carry are ignored). When no other adapter is
    left, the peft layers go too, so the module computes bit-identically to before the first was added."""
    if not has_peft(module):
        return
    others = [n for n in adapter_names(module) if n not in names]
    if not others:
        strip_peft(module)
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            for name in names:
                layer.delete_adapter(name)
    for name in names:
        module.peft_config.pop(name, None)
