"""Checks of a concept set: its structure (no base model needed) and whether it fits a given base model."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clif_core.errors import ClifError
from clif_core.validation import check_tensors

from . import lora_keys
from .file_format import KINDS, ConceptFile, to_tensors
from .thumbnail import MAX_THUMBNAIL_BYTES, PNG_MAGIC

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


def validate(cf: ConceptFile, where: str) -> None:
    """Structural checks that need no base model; `where` names the file or object in messages."""
    if cf.kind not in KINDS:
        raise ClifError(f"{where}: kind {cf.kind!r} is not one of {', '.join(KINDS)}")
    encoders = [k.name for k in lora_keys.text_keys(cf.base_family)]
    if sorted(cf.encoder_widths) != sorted(encoders):
        raise ClifError(
            f"{where}: encoder widths are given for {sorted(cf.encoder_widths)} but a {cf.base_family} model has "
            f"the text encoders {encoders}"
        )
    for name, width in cf.encoder_widths.items():
        if not isinstance(width, int) or width <= 0:
            raise ClifError(f"{where}: encoder width of {name} is {width!r}; it must be a positive integer")
    _check_concepts(cf, encoders, where)
    check_tensors(to_tensors(cf), where)
    _check_kind_metadata(cf, where)
    _check_loras(cf, where)
    _check_thumbnail(cf, where)


def _check_concepts(cf: ConceptFile, encoders: list[str], where: str) -> None:
    """Placeholders one word and unique, embedding names unique, one [k, width] embedding per encoder."""
    seen_names: dict[str, str] = {}
    seen_tokens: set[str] = set()
    for c in cf.concepts:
        label = f"{where}: concept {c.name!r}"
        if not c.token or any(ch.isspace() for ch in c.token):
            raise ClifError(f"{label}: placeholder token {c.token!r} must be one word without spaces, e.g. '<alice>'")
        if c.token in seen_tokens:
            raise ClifError(f"{label}: placeholder token {c.token!r} is used by two concepts; give each its own")
        seen_tokens.add(c.token)
        word = c.embedding_name
        if word in seen_names:
            raise ClifError(
                f"{label}: its name gives the embedding name {word!r}, the same as concept {seen_names[word]!r}; "
                "rename one of them"
            )
        seen_names[word] = c.name
        if sorted(c.embeddings) != sorted(encoders):
            raise ClifError(
                f"{label}: embeddings are given for {sorted(c.embeddings)} but a {cf.base_family} model needs one "
                f"per text encoder: {encoders}"
            )
        counts = set()
        for enc, emb in c.embeddings.items():
            if emb.dim() != 2 or emb.shape[0] < 1 or emb.shape[1] != cf.encoder_widths[enc]:
                raise ClifError(
                    f"{label}: the {enc} embedding has shape {list(emb.shape)}; expected [k, {cf.encoder_widths[enc]}]"
                    " with k ≥ 1 vectors"
                )
            counts.add(int(emb.shape[0]))
        if len(counts) > 1:
            raise ClifError(f"{label}: encoders have different vector counts {sorted(counts)}; use the same k for all")


def _check_loras(cf: ConceptFile, where: str) -> None:
    """The UNet and text LoRAs: complete modules, targets every consumer loads, the family's text prefixes."""
    lora_keys.check_lora_structure(cf.unet_lora, f"{where} (UNet LoRA)")
    lora_keys.check_targets(cf.unet_lora, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS, f"{where} (UNet LoRA)")
    lora_keys.check_lora_structure(cf.text_lora, f"{where} (text LoRA)")
    prefixes = [k.kohya_prefix for k in lora_keys.text_keys(cf.base_family)]
    for module in lora_keys.lora_modules(cf.text_lora):
        if not any(module.startswith(p + "_text_model_") for p in prefixes):
            raise ClifError(
                f"{where} (text LoRA): module {module} does not start with one of "
                f"{', '.join(p + '_' for p in prefixes)} as a {cf.base_family} text LoRA must"
            )
    for prefix in prefixes:
        part = {k: v for k, v in cf.text_lora.items() if k.startswith(prefix + "_")}
        lora_keys.check_targets(part, prefix, lora_keys.TEXT_LORA_TARGETS, f"{where} (text LoRA)")
        modules = lora_keys.lora_modules(part)
        if any(m.endswith(("_q_proj", "_k_proj", "_v_proj")) for m in modules) and \
                not any(m.endswith("_out_proj") for m in modules):
            raise ClifError(
                f"{where} (text LoRA): {prefix}_ adapts q/k/v_proj but no out_proj; diffusers' load_lora_weights "
                "then skips or refuses those modules. Include out_proj (lora_keys.TEXT_LORA_TARGETS has all six)"
            )


def _check_thumbnail(cf: ConceptFile, where: str) -> None:
    if cf.thumbnail is not None:
        if not cf.thumbnail.startswith(PNG_MAGIC):
            raise ClifError(f"{where}: the thumbnail is not a PNG image; pass PNG bytes (see make_thumbnail)")
        if len(cf.thumbnail) > MAX_THUMBNAIL_BYTES:
            raise ClifError(
                f"{where}: the thumbnail is {len(cf.thumbnail) // 1024} KiB; the limit is "
                f"{MAX_THUMBNAIL_BYTES // 1024} KiB. Use a smaller image (make_thumbnail makes a 256 px one)"
            )


def _check_kind_metadata(cf: ConceptFile, where: str) -> None:
    """An erasure patch lists what it erases ({"target": str, "alternative": str or null}, at least one) and
    its optional weight probe is {module: [numbers]}: every loader and the sampler rely on both."""
    if cf.kind != "erasure":
        return
    erased = cf.metadata.get("erased")
    if not isinstance(erased, list) or not erased:
        raise ClifError(f"{where}: an erasure patch must list its erased concepts (clif.metadata 'erased'); the file "
                        "is damaged or was not made by CLIF's erasure")
    for i, entry in enumerate(erased):
        if not isinstance(entry, dict) or not isinstance(entry.get("target"), str) \
                or not isinstance(entry.get("alternative"), (str, type(None))):
            raise ClifError(f"{where}: entry {i} of clif.metadata 'erased' is not "
                            "{'target': text, 'alternative': text or null}; the file is damaged")
    probe = cf.metadata.get("unet_probe", {})
    if not isinstance(probe, dict) or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in probe.values()):
        raise ClifError(f"{where}: clif.metadata 'unet_probe' is not a table of weight values; the file is damaged")


def check_compatible(cf: ConceptFile, base: "BaseModel", where: str = "concept file") -> list[str]:
    """Check `cf` against a `BaseModel`; raise ClifError for what cannot work, return warnings for what may.

    Errors: another family, other text encoders, other widths, LoRA modules the base lacks or of another
    size. Warning only: another base fingerprint, because a concept trained on a base usually works on its
    fine-tunes (same architecture, similar weights), which is how people use shared LoRAs.
    """
    if cf.base_family != base.family:
        raise ClifError(
            f"{where} was made for a {cf.base_family} model but the base model is {base.family}; load a "
            f"{cf.base_family} checkpoint or use concepts trained on this family"
        )
    slots = {s.name: s for s in base.text}
    if sorted(slots) != sorted(cf.encoder_widths):
        raise ClifError(
            f"{where} has embeddings for the text encoders {sorted(cf.encoder_widths)} but the base model has "
            f"{sorted(slots)}"
        )
    for name, width in cf.encoder_widths.items():
        if slots[name].width != width:
            raise ClifError(
                f"{where}: its {name} embeddings are {width} wide but the base model's {name} encoder is "
                f"{slots[name].width} wide; the file was made for a different model size"
            )
    lora_keys.check_lora_against(cf.unet_lora, base.unet, lora_keys.UNET_PREFIX, f"{where} (UNet LoRA)")
    for keys in lora_keys.text_keys(cf.base_family):
        part = {k: v for k, v in cf.text_lora.items() if k.startswith(keys.kohya_prefix + "_")}
        lora_keys.check_lora_against(part, slots[keys.name].encoder, keys.kohya_prefix, f"{where} (text LoRA)")
    warnings = []
    if cf.base_fingerprint and base.fingerprint and cf.base_fingerprint != base.fingerprint:
        warnings.append(
            f"{where} was trained on base {cf.base_fingerprint[:12]} but this base is {base.fingerprint[:12]}; "
            "it can still work on a fine-tune of the same base, but results may differ"
        )
    return warnings
