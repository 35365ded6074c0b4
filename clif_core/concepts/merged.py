"""Concept files applied for sampling: LoRAs merged into the base's weights, from deltas kept across runs.

Why (issue "concepts applied cost ≤ 10% over none"): the sampler used to `apply_concepts` for every run, that
is inject peft LoRA layers into the UNet and text encoder, load the file's weights into them, sample through
them and strip them again. Profiled on the sandbox model (64 px, 20 steps, CFG 7, one thread, one concept
file with a UNet and a text LoRA), a run took 10.3 s with the file against 5.0 s without: 2.0 s applying
(peft's layer injection 1.3 s of it, the tokenizer's `get_vocab()` and the random initialisation of the
extended embedding table another 0.1 s), 0.14 s removing, and the denoising loop 8.0 s instead of 4.9 s,
because every adapted layer runs its LoRA branch (two more small matmuls and peft's dispatch) at every step.
Text encoding and decoding cost the same. So half the extra time was the fixed per-run cost and half the
unmerged LoRA in the loop.

What this module does instead, for the files that act everywhere (not isolated to a region):
- the LoRA's ΔW of every adapted layer comes from peft itself (`LoraLayer.get_delta_weight`, after loading
  the file exactly as `apply_concepts` does, at strength 1) and is kept, per base model, by the file's
  content fingerprint (`_DELTAS`). Only the files of the last run are kept: one extra copy of the weights
  a file's LoRA touches, on the weights' device (`clear_cache` drops them, and they go with the base model:
  ComfyUI's "free model and node cache" drops the loader's output and with it the deltas);
- per run, each adapted layer gets a new weight Parameter `W + Σ strength·ΔW` (summed in float32), and its
  original Parameter is put back afterwards. The original tensor is never written to, so the base computes
  bit-identically after the run, whoever holds its parameters, and a run without concepts is a run on the
  untouched base. The loop then costs what a plain one does; a repeated run (same files, any strengths)
  costs one add per adapted weight; a new file costs peft's load once, as before.
Tokens are added per run as `apply_concepts` adds them (copies of the tokenizer are already kept; the
extended table is a copy of the original rows plus the concept rows). Memory: the kept deltas, plus the merged
weights during a run, each one copy of the weights the files' LoRAs touch.

Measured after the change, same model and thread: a repeated run's `apply_merged` takes 0.03-0.05 s and its
undo 2 ms, a UNet call on merged weights costs what one on the plain weights does (within ±3%, the noise of
the shared CPU), and a new file's first run takes about what every run's apply used to (peft's load once,
plus reading the deltas). `benchmarks/sampling.py --cpu` (2 threads): concepts 1.03× the time per image of
none, against 1.49× for the code before, run right after on the same machine (README's measured table).

Why not the alternatives: leaving peft layers or merged weights on the base between runs would make the
shared base model (other nodes use the same object) differ from the loaded one until something removed
them, and nothing guarantees a removal before another consumer runs. Keeping merged weights, keyed by files
and strengths, would make a repeated run free but could serve stale weights if the base's own weights
changed in place meanwhile (an erasure run writes them and puts them back); ΔW depends only on the file and
the layer's shape, so a cached delta is never stale, and is checked against the layer's shape, dtype and
device before use. peft's own `merge()`/`unmerge()` would need the layers injected every run (the cost being
removed) and unmerging subtracts, which does not restore the weights bit for bit.

Files isolated to a region keep live peft adapters (the isolation hooks act on their `lora_B` output), loaded
per run exactly as `apply_concepts` loads them.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Collection, Optional, Sequence

import torch

from .apply import (
    AppliedConcepts,
    add_tokens,
    check_files,
    file_tokens,
    load_loras,
    lora_components,
    refuse_busy,
)
from .file_format import ConceptFile, WarnFn

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

Deltas = dict[tuple[str, str], torch.Tensor]
"""(component, module name) → the ΔW a file's LoRA adds to that module's weight at strength 1."""

_DELTAS: "weakref.WeakKeyDictionary[Any, dict[str, Deltas]]" = weakref.WeakKeyDictionary()
"""Per base model (keyed by its UNet module, so it goes with the model): content fingerprint → deltas, for the
files the last run merged."""


def clear_cache(base: BaseModel) -> None:
    """Drop the deltas kept for `base` (the next run with concept files loads them again)."""
    _DELTAS.pop(base.unet, None)


def cached_fingerprints(base: BaseModel) -> list[str]:
    """Fingerprints of the files whose deltas are kept for `base`."""
    return list(_DELTAS.get(base.unet, {}))


def has_lora(cf: ConceptFile, strength: float) -> bool:
    return strength != 0 and bool(cf.unet_lora or cf.text_lora)


def lora_deltas(base: BaseModel, files: Sequence[ConceptFile]) -> list[Deltas]:
    """Each file's ΔW per adapted module at strength 1, as peft computes it: the files are loaded as
    `apply_concepts` loads them (peft adapters, keys and per-module ranks/alphas exact), each layer's
    `get_delta_weight` is read (in the layer weight's dtype), and the adapters are removed again."""
    from peft.tuners.lora import LoraLayer

    loading = AppliedConcepts(base=base, tokens={}, adapters={})
    deltas: list[Deltas] = [{} for _ in files]
    try:
        load_loras(base, [(cf, 1.0) for cf in files], loading)
        index = {adapter: i for i, adapter in loading.file_adapters.items()}
        with torch.no_grad():
            for module, component, _ in lora_components(base):
                for name, layer in module.named_modules():
                    if isinstance(layer, LoraLayer):
                        weight = layer.get_base_layer().weight
                        for adapter in layer.lora_A:
                            if adapter in index:  # kept in the weight's dtype, whatever peft computed it in
                                delta = layer.get_delta_weight(adapter).detach().to(weight.dtype)
                                deltas[index[adapter]][(component, name)] = delta
    finally:
        loading.remove()
    return deltas


def _usable(deltas: Deltas, modules: dict[str, Any]) -> bool:
    """The deltas still fit the base: every module there, with a weight of the same shape, dtype and device."""
    for (component, name), delta in deltas.items():
        try:
            weight = modules[component].get_submodule(name).weight
        except (KeyError, AttributeError):
            return False
        if weight.shape != delta.shape or weight.dtype != delta.dtype or weight.device != delta.device:
            return False
    return True


def _file_deltas(base: BaseModel, files: Sequence[ConceptFile], fingerprints: Sequence[str]) -> list[Deltas]:
    """The deltas of `files`, from the cache where it holds them for this base, else from `lora_deltas`; the
    cache then holds these files only."""
    modules = {component: module for module, component, _ in lora_components(base)}
    kept = _DELTAS.get(base.unet, {})
    found: dict[str, Deltas] = {fp: kept[fp] for fp in fingerprints if fp in kept and _usable(kept[fp], modules)}
    missing = {fp: cf for cf, fp in zip(files, fingerprints) if fp not in found}
    if missing:
        found.update(zip(missing, lora_deltas(base, list(missing.values()))))
    _DELTAS[base.unet] = {fp: found[fp] for fp in fingerprints}
    return [found[fp] for fp in fingerprints]


def _merge_weights(base: BaseModel, parts: Sequence[tuple[Deltas, float]], applied: AppliedConcepts) -> None:
    """Give every adapted module a new weight W + Σ strength·ΔW; the undo puts the original Parameter back."""
    modules = {component: module for module, component, _ in lora_components(base)}
    per_module: dict[tuple[str, str], list[tuple[torch.Tensor, float]]] = {}
    for deltas, strength in parts:
        for key, delta in deltas.items():
            per_module.setdefault(key, []).append((delta, strength))
    with torch.no_grad():
        for (component, name), terms in per_module.items():
            layer = modules[component].get_submodule(name)
            original = layer.weight
            merged = original.detach().float()
            for delta, strength in terms:
                merged = torch.add(merged, delta.float(), alpha=strength)
            layer.weight = torch.nn.Parameter(merged.to(original.dtype), requires_grad=False)

            def undo(layer=layer, original=original) -> None:
                layer.weight = original

            applied._undo.append(undo)


def apply_merged(
    base: BaseModel,
    files: Sequence[tuple[ConceptFile, float]],
    fingerprints: Sequence[str],
    live: Collection[int] = (),
    warn: Optional[WarnFn] = None,
) -> AppliedConcepts:
    """Apply concept files (each with a LoRA strength) to `base` for a run; undo with `.remove()`.

    Checks and tokens as `apply_concepts`. The LoRAs of the files whose index is in `live` are loaded as peft
    adapters (`adapter_of(i)`, for concept isolation); the others are merged into the weights, their deltas
    kept by `fingerprints` (the files' content fingerprints, one per file) for the next run.
    """
    if len(fingerprints) != len(files):
        raise ValueError(f"{len(files)} files but {len(fingerprints)} fingerprints")
    check_files(base, files, warn)
    refuse_busy(lora_components(base))
    merge = [i for i, (cf, strength) in enumerate(files) if i not in live and has_lora(cf, strength)]
    applied = AppliedConcepts(base=base, tokens=file_tokens(files), adapters={})
    try:
        if merge:
            deltas = _file_deltas(base, [files[i][0] for i in merge], [fingerprints[i] for i in merge])
            _merge_weights(base, [(d, float(files[i][1])) for d, i in zip(deltas, merge)], applied)
        add_tokens(base, [cf for cf, _ in files], applied)
        load_loras(base, [(cf, strength if i in live else 0.0) for i, (cf, strength) in enumerate(files)], applied)
    except BaseException:
        applied.remove()
        raise
    return applied
