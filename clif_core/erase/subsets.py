"""Which UNet weights an erasure trains, and how the change becomes a LoRA a patch file can carry.

Subsets (module names are diffusers'; attn2 is cross-attention, attn1 self-attention):
    lora       a peft LoRA (rank `lora_rank`, alpha = rank) on to_q/to_k/to_v/to_out.0 of every attention
    kv         the weights of attn2.to_k and attn2.to_v (what the text conditions flow through)
    xattn      every attn2 projection (ESD-x)
    non-xattn  every LoRA-carriable weight outside attn2 (ESD-u)
    full       every LoRA-carriable weight (lora_keys.UNET_LORA_TARGETS: attention, feed-forward, proj_in/out,
               resnet convolutions, time-embedding projections); biases and norms stay frozen

Weight subsets train the base's own weights in place as float32 master copies; the originals are kept on
the CPU and put back exactly when the run ends (also after a cancel or an error), so the in-memory base
model other nodes share is never left changed. Their change Δ = W − W₀ is written as a LoRA by SVD: per
module the smallest rank whose relative Frobenius error ‖Δ − Δ_r‖/‖Δ‖ is at most `tolerance`
(optionally capped), up = U_r·√S_r, down = √S_r·V_rᵀ, alpha = rank. A LoRA subset is its own patch, exact.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch

from clif_core.concepts import lora_keys
from clif_core.concepts.apply import AppliedConcepts, apply_concepts
from clif_core.concepts.file_format import ConceptFile

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")

_SELECT: dict[str, Callable[[str], bool]] = {
    "lora": lambda n: any(n.endswith(f".attn1.{p}") or n.endswith(f".attn2.{p}") for p in _ATTENTION),
    "kv": lambda n: n.endswith(".attn2.to_k") or n.endswith(".attn2.to_v"),
    "xattn": lambda n: ".attn2." in n,
    "non-xattn": lambda n: ".attn2." not in n,
    "full": lambda n: True,
}


def select_modules(unet: Any, subset: str) -> list[tuple[str, str, torch.nn.Module]]:
    """(diffusers module name, kohya module name, Linear/Conv2d) of the modules `subset` trains."""
    return [m for m in lora_keys.target_modules(unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)
            if _SELECT[subset](m[0])]


class WeightSubset:
    """Train the base's own weights of a subset; a context manager that restores them exactly."""

    def __init__(self, base: BaseModel, subset: str):
        self.base = base
        self.modules = select_modules(base.unet, subset)
        self.originals: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "WeightSubset":
        for _, kohya, layer in self.modules:
            self.originals[kohya] = layer.weight.detach().to("cpu", copy=True)
            layer.weight.data = layer.weight.data.float()
        return self

    def __exit__(self, *exc: object) -> None:
        for _, kohya, layer in self.modules:
            if kohya in self.originals:
                original = self.originals[kohya]
                layer.weight.data = original.to(layer.weight.device, copy=True)
        self.originals.clear()

    def params(self) -> dict[str, torch.nn.Parameter]:
        return {kohya: layer.weight for _, kohya, layer in self.modules}

    def patch_lora(self, tolerance: float, max_rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        deltas = {kohya: layer.weight.detach().float() - self.originals[kohya].to(layer.weight.device).float()
                  for _, kohya, layer in self.modules}
        return lora_from_deltas(deltas, tolerance, max_rank)


class LoraSubset:
    """Train a fresh LoRA on every attention projection, injected through apply_concepts (which removes it
    exactly afterwards). lora_A starts as peft initialises it (Kaiming-uniform, from `seed`), lora_B at zero."""

    def __init__(self, base: BaseModel, rank: int, seed: int):
        self.base, self.rank, self.seed = base, rank, seed
        self.applied: Optional[AppliedConcepts] = None
        self.adapter = ""  # the name apply_concepts gave the LoRA, while applied

    def initial_file(self) -> ConceptFile:
        g = torch.Generator().manual_seed(self.seed)
        lora: dict[str, torch.Tensor] = {}
        for _, kohya, layer in select_modules(self.base.unet, "lora"):
            down = torch.empty(self.rank, layer.weight.shape[1])
            torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=g)
            lora[kohya + ".lora_down.weight"] = down
            lora[kohya + ".lora_up.weight"] = torch.zeros(layer.weight.shape[0], self.rank)
            lora[kohya + ".alpha"] = torch.tensor(float(self.rank))
        # The trainable LoRA before training: a plain LoRA-only set (an "erasure" file must list what it erased).
        return ConceptFile(concepts=[], base_family=self.base.family,
                           encoder_widths={s.name: s.width for s in self.base.text}, unet_lora=lora)

    def __enter__(self) -> "LoraSubset":
        self.applied = apply_concepts(self.base, [(self.initial_file(), 1.0)])
        self.adapter = self.applied.adapter_of(0)
        for p in self.params().values():
            p.data = p.data.float()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.applied is not None:
            self.applied.remove()
            self.applied, self.adapter = None, ""

    def params(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.base.unet.named_parameters() if f".{self.adapter}." in name}

    def patch_lora(self, tolerance: float, max_rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        lora = lora_keys.lora_from_peft(self.base.unet, lora_keys.UNET_PREFIX, adapter_name=self.adapter)
        lora = {k: v.float() for k, v in lora.items()}
        return lora, {"factorised": False, "rank": self.rank, "max_relative_error": 0.0}


def make_subset(base: BaseModel, subset: str, lora_rank: int, seed: int) -> WeightSubset | LoraSubset:
    return LoraSubset(base, lora_rank, seed) if subset == "lora" else WeightSubset(base, subset)


def lora_from_deltas(deltas: dict[str, torch.Tensor], tolerance: float,
                     max_rank: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A kohya-layout LoRA of per-module weight deltas (module docstring) and its statistics; modules whose
    delta is exactly zero are left out."""
    lora: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    worst = 0.0
    for kohya, delta in deltas.items():
        matrix = delta.reshape(delta.shape[0], -1).float()
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        total = float(s.square().sum())
        if total == 0.0:
            continue
        tail = (s.square().flip(0).cumsum(0).flip(0) / total).sqrt()  # tail[r] = ‖Δ − Δ_r‖ / ‖Δ‖ for r ≥ 0
        tail = torch.cat([tail, tail.new_zeros(1)])
        rank = int((tail > tolerance).sum())  # tail decreases: the first r with tail[r] ≤ tolerance
        rank = max(1, min(rank, max_rank or rank, s.numel()))
        worst = max(worst, float(tail[rank]))
        root = s[:rank].sqrt()
        up, down = u[:, :rank] * root, root[:, None] * vh[:rank]
        if delta.dim() == 4:
            up, down = up[:, :, None, None], down.reshape(rank, *delta.shape[1:])
        lora[kohya + ".lora_down.weight"] = down.contiguous().cpu()
        lora[kohya + ".lora_up.weight"] = up.contiguous().cpu()
        lora[kohya + ".alpha"] = torch.tensor(float(rank))
        ranks[kohya] = rank
    stats = {"factorised": True, "tolerance": tolerance, "max_rank": max_rank, "max_relative_error": worst,
             "modules": len(ranks), "rank_min": min(ranks.values(), default=0),
             "rank_max": max(ranks.values(), default=0)}
    return lora, stats


def lora_deltas(lora: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """(kohya module, ΔW = up·down·alpha/rank) for every module of a kohya-layout LoRA, in the weight's shape
    ([out, in] or [out, in, kh, kw]), float32."""
    for module in lora_keys.lora_modules(lora):
        down, up = lora[module + ".lora_down.weight"].float(), lora[module + ".lora_up.weight"].float()
        rank = down.shape[0]
        scale = float(lora[module + ".alpha"]) / rank
        delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)) * scale
        yield module, delta.reshape(up.shape[0], *down.shape[1:])
