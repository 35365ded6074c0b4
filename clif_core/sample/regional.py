"""Regional composition from text only: per-region prompts applied inside the UNet's cross-attention.

Inside every cross-attention layer the output for the global prompt and the output for each region prompt
are blended per pixel: `out = w_global · attn(global) + Σ_r w_r · attn(region r)`, with the weights of
`region_weights` (w_r = strength_r · mask_r, scaled down where regions overlap so that they sum to at most
1, and w_global = 1 − Σ_r w_r) rasterised at that layer's resolution. Only the conditional half of a
classifier-free-guidance batch is changed; the negative prompt stays global. docs/sampling.md explains the
choice of attention masking over latent couple.

The same weights, as ComfyUI conditioning masks, drive the Regional Conditioning node on the native path
(there ComfyUI blends noise predictions, so that path is latent couple with identical weights).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F

from clif_core.errors import ClifError

from .config import LAYOUTS, REGION_STRENGTH, Region, check_region_mask


def layout_boxes(layout: str, n: int) -> list[tuple[float, float, float, float]]:
    """`n` boxes tiling the image: equal columns left to right, equal rows top to bottom, or a grid filled row
    by row (as many columns as ⌈√n⌉, the last row's cells widened to fill it)."""
    if n < 1:
        raise ClifError("a regional layout needs at least one region prompt")
    if layout == "left_right":
        return [(i / n, 0.0, (i + 1) / n, 1.0) for i in range(n)]
    if layout == "top_bottom":
        return [(0.0, i / n, 1.0, (i + 1) / n) for i in range(n)]
    if layout == "grid":
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        boxes = []
        for r in range(rows):
            in_row = min(cols, n - r * cols)
            boxes += [(c / in_row, r / rows, (c + 1) / in_row, (r + 1) / rows) for c in range(in_row)]
        return boxes
    raise ClifError(f"layout {layout!r} is not known; use one of {', '.join(LAYOUTS)}, boxes or masks")


def layout_regions(layout: str, prompts: Sequence[str], strength: float = REGION_STRENGTH) -> tuple[Region, ...]:
    """Regions for `prompts` placed by a named layout (see `layout_boxes`)."""
    return tuple(Region(p, box=b, strength=strength) for p, b in zip(prompts, layout_boxes(layout, len(prompts))))


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
    """Boxes written as "x0,y0,x1,y1; x0,y0,x1,y1 …" (fractions of width and height), one per region."""
    boxes = []
    for i, part in enumerate(p for p in text.replace("\n", ";").split(";") if p.strip()):
        try:
            values = tuple(float(v) for v in part.split(","))
        except ValueError:
            values = ()
        if len(values) != 4:
            raise ClifError(f"box {i + 1} {part.strip()!r} is not four numbers x0,y0,x1,y1 (fractions of the image "
                            "width and height, e.g. 0,0,0.5,1 for the left half); separate boxes with ';'")
        boxes.append(values)
    return boxes


def build_regions(layout: str, prompts: Sequence[str], boxes: str = "", masks: Optional[Any] = None,
                  strength: float = REGION_STRENGTH) -> tuple[Region, ...]:
    """Regions from what a user writes: one prompt per region, placed by a named layout (LAYOUTS), by `boxes`
    text (layout "boxes", see `parse_boxes`) or by `masks` (layout "masks": a sequence or [N, H, W] array/tensor
    of N masks, one per prompt). Empty prompts are dropped."""
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ClifError("regional prompts are on but no region prompt was given; write one prompt per region")
    if layout == "boxes":
        placed = parse_boxes(boxes)
        if len(placed) != len(prompts):
            raise ClifError(f"{len(placed)} box(es) for {len(prompts)} region prompt(s); give one box per prompt "
                            "as 'x0,y0,x1,y1' separated by ';'")
        return tuple(Region(p, box=b, strength=strength) for p, b in zip(prompts, placed))
    if layout == "masks":
        count = 0 if masks is None else len(masks)
        if count != len(prompts):
            raise ClifError(f"{count} mask(s) for {len(prompts)} region prompt(s); give one mask per prompt, in "
                            "the same order")
        for i, (p, m) in enumerate(zip(prompts, masks), 1):
            check_region_mask(m, f"region {i} ({p!r})")
        return tuple(Region(p, mask=m, strength=strength) for p, m in zip(prompts, masks))
    return layout_regions(layout, prompts, strength)


def rasterise(region: Region, height: int, width: int) -> torch.Tensor:
    """The region's box or mask as a [height, width] float32 map in 0..1 (a box is hard: 1 at the pixel centres
    inside it)."""
    if region.box is not None:
        x0, y0, x1, y1 = region.box
        ys = (torch.arange(height, dtype=torch.float64) + 0.5) / height  # pixel centres
        xs = (torch.arange(width, dtype=torch.float64) + 0.5) / width
        inside_y = (ys >= y0) & (ys < y1)
        inside_x = (xs >= x0) & (xs < x1)
        return (inside_y[:, None] & inside_x[None, :]).float()
    mask = torch.as_tensor(region.mask, dtype=torch.float32).detach().cpu()
    if tuple(mask.shape) != (height, width):
        mask = F.interpolate(mask[None, None], size=(height, width), mode="bilinear", antialias=True,
                             align_corners=False)[0, 0]
    return mask.clamp(0.0, 1.0)


def region_weights(regions: Sequence[Region], height: int, width: int) -> torch.Tensor:
    """Per-pixel weights [1 + R, height, width] (float32): the global prompt's first, then each region's.

    They are non-negative and sum to 1 at every pixel.
    """
    w = torch.stack([rasterise(r, height, width) * r.strength for r in regions])
    total = w.sum(0)
    w = w / total.clamp(min=1.0)
    return torch.cat([(1.0 - w.sum(0)).clamp(min=0.0)[None], w])


def layer_size(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The (h, w) of a UNet level with `tokens` pixels: each level halves the latent, rounding up."""
    h, w = latent_hw
    while h * w > tokens and (h > 1 or w > 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != tokens:
        raise ClifError(f"a cross-attention layer has {tokens} positions, which is no downscale of the "
                        f"{latent_hw[0]}×{latent_hw[1]} latent; regional prompts do not support this UNet")
    return h, w


class RegionalAttention:
    """Context manager that routes every cross-attention of `unet` through region blending.

    `contexts` are the region prompts' encoder states ([1, tokens, width] each, in `regions` order);
    `cond_rows` the rows of each UNet batch that carry the positive prompt (the second half under CFG).
    `region_pass(i)`, when given, is entered around the attention to region i's prompt (and
    `region_pass(None)` around the global one): `isolation.MaskedLoRA` uses it to let an isolated LoRA's
    keys and values act only there. The UNet's own processors do the attention; on exit they are put back.
    """

    def __init__(self, unet: Any, regions: Sequence[Region], contexts: Sequence[torch.Tensor],
                 latent_hw: tuple[int, int], cond_rows: slice,
                 region_pass: Optional[Callable[[Optional[int]], ContextManager]] = None):
        self.unet = unet
        self.region_pass = region_pass or (lambda region: contextlib.nullcontext())
        self.regions = list(regions)
        self.contexts = list(contexts)
        self.latent_hw = latent_hw
        self.cond_rows = cond_rows
        self._weights: dict[int, torch.Tensor] = {}
        self._saved: dict[str, Any] = {}

    def weights(self, tokens: int, like: torch.Tensor) -> torch.Tensor:
        """[1 + R, 1, tokens, 1] weights for a layer with `tokens` positions, on `like`'s device and dtype."""
        if tokens not in self._weights:
            h, w = layer_size(self.latent_hw, tokens)
            self._weights[tokens] = region_weights(self.regions, h, w).reshape(-1, 1, tokens, 1)
        cached = self._weights[tokens]
        if cached.device != like.device or cached.dtype != like.dtype:
            cached = self._weights[tokens] = cached.to(device=like.device, dtype=like.dtype)
        return cached

    def __enter__(self) -> "RegionalAttention":
        self._saved = dict(self.unet.attn_processors)
        routed = {}
        for name, processor in self._saved.items():
            module = self.unet.get_submodule(name[: -len(".processor")])
            routed[name] = _RegionalProcessor(self, processor) if module.is_cross_attention else processor
        if all(p is self._saved[n] for n, p in routed.items()):
            raise ClifError("this UNet has no cross-attention layers, so regional prompts cannot be applied")
        self.unet.set_attn_processor(routed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.unet.set_attn_processor(self._saved)


class _RegionalProcessor:
    """Wraps one cross-attention layer's processor: global output everywhere, region outputs blended in."""

    def __init__(self, owner: RegionalAttention, inner: Any):
        self.owner = owner
        self.inner = inner

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.owner.region_pass(None):
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        rows = self.owner.cond_rows
        x = hidden_states[rows]
        weights = self.owner.weights(x.shape[1], out)
        blended = out[rows] * weights[0]
        for i, (w, context) in enumerate(zip(weights[1:], self.owner.contexts)):
            with self.owner.region_pass(i):
                region = self.inner(attn, x, context.expand(x.shape[0], -1, -1), None, temb, *args, **kwargs)
            blended = blended + w * region
        return torch.cat([out[: rows.start], blended, out[rows.stop:]])
