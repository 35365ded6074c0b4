"""Concept isolation: a concept file bound to a region has its LoRA act only inside that region.

The mechanism is at the adapter level. Every peft LoRA layer computes `base(x) + scale · B(A(x))`; a forward
hook on the bound adapter's `B` multiplies its output by a gate before peft scales and adds it, so the LoRA's
added output is what the gate lets through:

- layers whose input is the UNet's feature map (convolutions, self-attention q/k/v/out, cross-attention q and
  out, the transformer's feed-forward and projections): the gate is the region's soft mask resized to that
  layer's resolution (`layer_mask`), so the added output is exactly zero wherever the mask is zero;
- cross-attention k and v, whose input is the prompt's tokens, not pixels: the gate is 1 only while the
  region's own prompt is attended (`RegionalAttention` announces each region pass through `region_pass`),
  so the LoRA's keys and values reach the image only through that region's blending weights;
- text-encoder layers: gate 1 only while the region's own prompt is encoded;
- `time_emb_proj` (its input is the timestep embedding, added to the whole feature map): gate 0, that part
  of a bound LoRA is off.

`MaskedLoRA` is a context manager that registers these hooks and removes exactly the ones it added.
docs/sampling.md describes the cost and the limits.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from clif_core.errors import ClifError

from .config import ISOLATION_EDGE, Region
from .regional import layer_size, rasterise

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


def soft_mask(region: Region, latent_hw: tuple[int, int], edge: float = ISOLATION_EDGE) -> torch.Tensor:
    """The region's mask at latent resolution with a soft inner edge: `m · blur(m)`, a Gaussian blur of sigma
    `edge` × the latent's shorter side (replicated at the image border, so a region touching the border stays
    whole there). A mask region is first resized to the latent by area. The result is zero wherever the region's
    own mask is zero and about half on a hard box's edge."""
    h, w = latent_hw
    if region.box is not None:
        hard = rasterise(region, h, w)
    else:  # by area, so that no latent pixel wholly outside the mask gets a share of it
        hard = layer_mask(torch.as_tensor(region.mask, dtype=torch.float32).detach().cpu().clamp(0.0, 1.0), h, w)
    sigma = edge * min(h, w)
    if sigma < 0.25:
        return hard
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    blurred = hard[None, None]
    blurred = F.conv2d(F.pad(blurred, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return hard * blurred[0, 0]


def layer_mask(latent_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`latent_mask` at a UNet level's (height, width): each cell is the mean over the latent pixels it covers
    (area resampling), so a cell is zero exactly when its whole footprint is outside the region."""
    if tuple(latent_mask.shape) == (height, width):
        return latent_mask
    return F.interpolate(latent_mask[None, None], size=(height, width), mode="area")[0, 0]


@dataclass(frozen=True)
class Binding:
    """Adapter `adapter` (a peft adapter name) isolated to region `region` (0-based index into the regions)."""

    adapter: str
    region: int


def _lora_layers(module: torch.nn.Module, adapter: str) -> Iterator[tuple[str, Any]]:
    from peft.tuners.lora import LoraLayer

    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_B:
            yield name, layer


def _is_cross_kv(unet: Any, name: str) -> bool:
    parent, _, leaf = name.rpartition(".")
    return leaf in ("to_k", "to_v") and bool(getattr(unet.get_submodule(parent), "is_cross_attention", False))


class MaskedLoRA:
    """Context manager: the adapters in `bindings` (already loaded on `base`, e.g. by `apply_concepts`) act only
    inside their regions. `regions` are the run's regions, `latent_hw` the latent's (height, width), `edge`
    the soft edge (see `soft_mask`). `region_pass(i)` marks the encoding or attending of region i's prompt.

    `patched` lists (adapter, layer name, kind) for every hooked layer, kind being "spatial", "prompt" (text
    side: cross-attention k/v and text encoders) or "off" (time embedding).
    """

    def __init__(self, base: BaseModel, bindings: Sequence[Binding], regions: Sequence[Region],
                 latent_hw: tuple[int, int], edge: float = ISOLATION_EDGE):
        self.base = base
        self.bindings = list(bindings)
        self.latent_hw = latent_hw
        self.masks = {b.region: soft_mask(regions[b.region], latent_hw, edge) for b in self.bindings}
        self.patched: list[tuple[str, str, str]] = []
        self._current: Optional[int] = None
        self._cache: dict[tuple, torch.Tensor] = {}
        self._handles: list[Any] = []

    @contextlib.contextmanager
    def region_pass(self, region: Optional[int]) -> Iterator[None]:
        """While inside, region `region`'s prompt is the one being encoded or attended (None: no region's)."""
        before, self._current = self._current, region
        try:
            yield
        finally:
            self._current = before

    def mask_for(self, region: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """Region `region`'s soft mask at (height, width), on `like`'s device and dtype (cached)."""
        key = (region, height, width, like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = layer_mask(self.masks[region], height, width).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _spatial_hook(self, region: int):
        def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            if output.ndim == 4:  # convolution: [B, C, H, W]
                return output * self.mask_for(region, output.shape[2], output.shape[3], output)
            h, w = layer_size(self.latent_hw, output.shape[1])  # tokens: [B, H·W, C]
            return output * self.mask_for(region, h, w, output).reshape(1, -1, 1)

        return hook

    def _prompt_hook(self, region: int):
        def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            return output if self._current == region else torch.zeros_like(output)

        return hook

    @staticmethod
    def _off_hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(output)

    def _hook(self, name: str, layer: Any, binding: Binding, kind: str) -> None:
        if kind == "off":
            hook = self._off_hook
        else:
            hook = (self._spatial_hook if kind == "spatial" else self._prompt_hook)(binding.region)
        self._handles.append(layer.lora_B[binding.adapter].register_forward_hook(hook))
        self.patched.append((binding.adapter, name, kind))

    def __enter__(self) -> "MaskedLoRA":
        unet = self.base.unet
        try:
            for binding in self.bindings:
                for name, layer in _lora_layers(unet, binding.adapter):
                    kind = ("prompt" if _is_cross_kv(unet, name) else
                            "off" if name.endswith("time_emb_proj") else "spatial")
                    self._hook(name, layer, binding, kind)
                for slot in self.base.text:
                    for name, layer in _lora_layers(slot.encoder, binding.adapter):
                        self._hook(f"{slot.name}.{name}", layer, binding, "prompt")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        while self._handles:
            self._handles.pop().remove()
        self.patched.clear()


def check_bound_tokens(prompts: dict[str, str], tokens_of: dict[int, list[str]], region_names: Sequence[str]) -> None:
    """A bound file's placeholders may appear only in its own region's prompt.

    `prompts` maps where a prompt is ("prompt", "negative prompt", "region 2 prompt") to its text,
    `tokens_of` each bound region index to its files' placeholders, `region_names` the region field names.
    """
    from clif_core.concepts.apply import PLACEHOLDER

    for region, tokens in tokens_of.items():
        own = region_names[region]
        for where, text in prompts.items():
            if where == own:
                continue
            found = sorted(set(PLACEHOLDER.findall(text)) & set(tokens))
            if found:
                raise ClifError(
                    f"{where} uses {', '.join(found)}, whose concept file is isolated to region {region + 1}; an "
                    f"isolated concept's tokens may appear only in its region's prompt. Move {found[0]} into "
                    f"{own}, or unbind the file to use it everywhere"
                )
