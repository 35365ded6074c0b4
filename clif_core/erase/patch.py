"""Erasure patches: concept files of kind "erasure" (a UNet LoRA, no concepts), made for one base model.

`metadata` of the ConceptFile (the file's `clif.metadata`) holds:
    erased       [{"target": "pig", "alternative": "cow" | null}, …]
    method, params, steps, preserve
    patch        how the LoRA was made (factorised by SVD or not; ranks; largest relative error)
    unet_probe   {kohya module: [16 weight values of the base, evenly strided]} of up to 32 modules the
                 patch changes: lets a host that has the UNet weights but no file identity (a ComfyUI MODEL)
                 check the patch was made for them (`probe_mismatch`)
The base's fingerprint is the file's `clif.base_fingerprint`. Because a patch is a delta fitted to one set
of weights, applying it to another base is refused unless asked for (`allow_other_base`).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

import torch

from clif_core.concepts import lora_keys
from clif_core.concepts.checks import validate
from clif_core.concepts.file_format import ConceptFile, WarnFn
from clif_core.concepts.files import load_concept_file
from clif_core.errors import ClifError
from clif_core.validation import check_strength

from .subsets import lora_deltas

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

PROBE_MODULES = 32
PROBE_VALUES = 16
PROBE_RTOL = 1e-2  # bf16 keeps a relative error below 0.4%
PROBE_ATOL = 1e-3  # relative to the largest probed value of the tensor (fp16 subnormals)


def check_is_patch(cf: ConceptFile, where: str) -> None:
    """Refuse a concept file that is not an erasure patch (its erased list is checked by checks.validate,
    which every loader and the sampler use)."""
    if cf.kind != "erasure":
        raise ClifError(f"{where} is a concept file of kind {cf.kind!r}, not an erasure patch; load it with "
                        "Load Concept File, or pick a file made by Erase Concepts")
    validate(cf, where)


def check_patch_base(patch: ConceptFile, base: BaseModel, allow_other_base: bool = False,
                     warn: Optional[WarnFn] = None, where: str = "erasure patch") -> None:
    """Refuse a patch made for other weights (fingerprint) unless `allow_other_base`, then only warn."""
    from clif_core.concepts.checks import check_compatible

    check_compatible(patch, base, where)  # family, encoders, LoRA shapes: ClifError; its warnings are ours below
    if patch.base_fingerprint and base.fingerprint and patch.base_fingerprint != base.fingerprint:
        message = (f"{where} was made on base {patch.base_fingerprint[:12]} but this base is "
                   f"{base.fingerprint[:12]}")
        if not allow_other_base:
            raise ClifError(f"{message}. An erasure patch is a change fitted to the exact weights it was made on; "
                            "erase again on this base, or allow another base to apply it anyway")
        (warn or (lambda m: None))(f"{message}; applied anyway as asked, results may differ")


def load_erasure_patch(path: str | os.PathLike, base: Optional[BaseModel] = None, allow_other_base: bool = False,
                       warn: Optional[WarnFn] = None) -> ConceptFile:
    """Read an erasure patch; with `base`, also check it was made for that base (see check_patch_base)."""
    cf = load_concept_file(path)
    check_is_patch(cf, str(path))
    if base is not None:
        check_patch_base(cf, base, allow_other_base, warn, where=str(path))
    return cf


def weight_probe(unet: Any, modules: list[str]) -> dict[str, list[float]]:
    """Sample values of the base weights of (up to PROBE_MODULES of) the kohya `modules`."""
    layers = {kohya: layer for _, kohya, layer in lora_keys.target_modules(
        unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)}
    chosen = sorted(modules)
    if len(chosen) > PROBE_MODULES:
        chosen = [chosen[i * len(chosen) // PROBE_MODULES] for i in range(PROBE_MODULES)]
    return {m: _probe_values(layers[m].weight) for m in chosen}


def _probe_values(weight: torch.Tensor) -> list[float]:
    flat = weight.detach().reshape(-1)
    index = torch.arange(PROBE_VALUES, dtype=torch.int64) * flat.numel() // PROBE_VALUES
    return [float(v) for v in flat[index.to(flat.device)].float().cpu()]


def probe_mismatch(patch: ConceptFile, weights: Mapping[str, torch.Tensor]) -> Optional[str]:
    """None when `weights` (kohya module → base weight, e.g. read from a ComfyUI MODEL) are the ones the
    patch was made on, within the precision a half-precision copy keeps; else a message naming a module."""
    probe = patch.metadata.get("unet_probe") or {}
    for module, expected in probe.items():
        if module not in weights:
            return f"the model has no module {module}"
        got = torch.tensor(_probe_values(weights[module]))
        want = torch.tensor(expected)
        tolerance = PROBE_RTOL * want.abs() + PROBE_ATOL * want.abs().max()
        if not bool(((got - want).abs() <= tolerance).all()):
            return f"the weights of {module} differ from those the patch was made on"
    return None


@contextmanager
def merged(base: BaseModel, patch: ConceptFile, strength: float = 1.0) -> Iterator[Any]:
    """Add the patch's ΔW·strength into the base's UNet weights for the `with` block; the touched weights
    are put back exactly afterwards."""
    layers = {kohya: layer for _, kohya, layer in lora_keys.target_modules(
        base.unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)}
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for module, delta in lora_deltas(patch.unet_lora):
                weight = layers[module].weight
                saved[module] = weight.detach().clone()
                weight.copy_((weight.float() + strength * delta.to(weight.device)).to(weight.dtype))
        yield base
    finally:
        with torch.no_grad():
            for module, original in saved.items():
                layers[module].weight.copy_(original)


def merge_into_checkpoint(base: BaseModel, patch: ConceptFile, out_path: str | os.PathLike, strength: float = 1.0,
                          allow_other_base: bool = False, warn: Optional[WarnFn] = None) -> Path:
    """Write base + patch as one single-file checkpoint (original layout, atomic); the base is left as it was."""
    from clif_core.models.ldm_layout import save_single_file

    check_is_patch(patch, "erasure patch")
    check_strength(strength, "merge strength")
    check_patch_base(patch, base, allow_other_base, warn)
    pairs = "; ".join(f"{t} -> {a}" if a else t for t, a in patch.erased_pairs())
    with merged(base, patch, strength):
        return save_single_file(base, out_path, metadata={
            "clif.merged_erasure": pairs, "clif.merged_from_fingerprint": base.fingerprint,
            "clif.merged_strength": str(strength)})


def export_for_loraloader(patch: ConceptFile, loras_dir: str | os.PathLike, stem: str,
                          overwrite: bool = False) -> Path:
    """The patch as a plain LoRA in `loras_dir` for ComfyUI's stock LoraLoader (and diffusers)."""
    from clif_core.concepts.exports import export_comfy

    check_is_patch(patch, f"erasure patch {patch.display_title()!r}")
    [path] = export_comfy(patch, loras_dir, loras_dir, stem, overwrite=overwrite)  # no concepts: LoRA only
    return path
