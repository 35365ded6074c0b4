"""Concept file format v1: one .safetensors per concept set (docs/concept-file.md is the specification).

Tensors:
    bundle_emb.<embedding name>.<encoder>   [k, width]   token embeddings of one concept for one encoder
    lora_unet_<module>.{lora_down.weight, lora_up.weight, alpha}     UNet LoRA (see lora_keys)
    lora_te_/lora_te1_/lora_te2_<module>.{...}                       optional text-encoder LoRA
Metadata (safetensors string metadata): `clif.*` keys (format, version, concepts, base model, recipe)
and `modelspec.*` keys (sai_model_spec 1.0.0, architecture, title, thumbnail).

This module is the format: the in-memory concept set, its tensors and metadata. Beside it: `files`
(save_concept_file / load_concept_file, the documented entry points), `checks` (validation, and the checks
against a base model), `header` (reading a safetensors header safely), `thumbnail` (the preview picture).

The same file loads in ComfyUI's stock LoraLoader (which ignores the embeddings with a log line) and,
through `clif_core.concepts.apply` or the exports, in diffusers.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from clif_core.errors import ClifError

from . import lora_keys
from .header import MAX_METADATA_BYTES, metadata_size

FORMAT_NAME = "clif.concepts"
FORMAT_VERSION = 1
KINDS = ("concepts", "erasure")


EMBEDDING_PREFIX = "bundle_emb."

# modelspec architecture ids as kohya-ss sd-scripts writes them (sai_model_spec 1.0.0).
_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}
_IMPLEMENTATIONS = {"sdxl": "https://github.com/Stability-AI/generative-models"}

WarnFn = Callable[[str], None]


def modelspec_architecture(family: str, prediction_type: str) -> str:
    """The modelspec architecture id of a base model (without the "/lora" adapter suffix)."""
    if family == "sd2":
        return "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    try:
        return _ARCHITECTURES[family]
    except KeyError:
        raise ClifError(f"unknown model family {family!r}: use sd1, sd2 or sdxl") from None


def embedding_name(concept_name: str) -> str:
    """The concept's name as one word: tensor keys, ComfyUI `embedding:<name>` and export file names use it."""
    word = re.sub(r"[^\w-]+", "_", concept_name.strip()).strip("_")
    if not word:
        raise ClifError(f"concept name {concept_name!r} has no letters or digits; give it a name such as 'alice'")
    return word


@dataclass
class ConceptEntry:
    """One learnt concept: `embeddings` maps an encoder name ("clip_l", "clip_h", "clip_g") to [k, width]."""

    name: str
    token: str  # the placeholder written in prompts, e.g. "<alice>"
    class_word: str
    embeddings: dict[str, torch.Tensor]

    @property
    def vectors(self) -> int:
        """k, the number of token vectors (the same for every encoder)."""
        return int(next(iter(self.embeddings.values())).shape[0]) if self.embeddings else 0

    @property
    def embedding_name(self) -> str:
        return embedding_name(self.name)


@dataclass
class ConceptFile:
    """A concept set in memory, exactly what a v1 file holds.

    `unet_lora` and `text_lora` are in the kohya layout of `lora_keys` (ComfyUI's `load_lora_for_models`
    takes them as they are). `encoder_widths` lists every text encoder of the base model by name.
    `kind` is "concepts" or "erasure"; `metadata` holds kind-specific JSON data (for example an erasure
    patch's erased → alternative pairs). `recipe` is the training configuration, JSON-serialisable.
    An empty `title` is saved as the concept names.
    """

    concepts: list[ConceptEntry]
    base_family: str
    encoder_widths: dict[str, int]
    base_fingerprint: str = ""
    base_prediction_type: str = "epsilon"
    unet_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    text_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    title: str = ""
    thumbnail: Optional[bytes] = None
    kind: str = "concepts"
    metadata: dict[str, Any] = field(default_factory=dict)

    def concept(self, token_or_name: str) -> ConceptEntry:
        for c in self.concepts:
            if token_or_name in (c.token, c.name):
                return c
        known = ", ".join(c.token for c in self.concepts) or "none"
        raise ClifError(f"no concept {token_or_name!r} in this concept file; it has {known}")

    def display_title(self) -> str:
        return self.title or ", ".join(c.name for c in self.concepts) or f"CLIF {self.kind}"

    def erased_pairs(self) -> list[tuple[str, Optional[str]]]:
        """An erasure patch's (target, alternative or None) pairs, in order; none for a concept set."""
        return [(e["target"], e.get("alternative")) for e in self.metadata.get("erased", [])]

    def summary(self) -> str:
        """A few human-readable lines: what the file holds (concepts, or what a patch erases and how) and what it
        was made for."""
        lines = [f"{self.display_title()} ({self.kind}, base {self.base_family}"
                 + (f", fingerprint {self.base_fingerprint[:12]}" if self.base_fingerprint else "") + ")"]
        for c in self.concepts:
            lines.append(f"  {c.token}: {c.name} (class '{c.class_word}', {c.vectors} vector(s) per encoder)")
        if self.kind == "erasure":
            meta = self.metadata
            for target, alternative in self.erased_pairs():
                lines.append(f"  erases {target!r}" + (f" → {alternative!r}" if alternative else " (no alternative)"))
            if meta.get("preserve"):
                lines.append(f"  preserves {', '.join(map(repr, meta['preserve']))}")
            lines.append(f"  method {meta.get('method')}, params {meta.get('params')}, {meta.get('steps')} steps")
        for label, lora in (("UNet LoRA", self.unet_lora), ("text LoRA", self.text_lora)):
            modules = lora_keys.lora_modules(lora)
            if modules:
                ranks = sorted({int(lora[m + ".lora_down.weight"].shape[0]) for m in modules})
                lines.append(f"  {label}: {len(modules)} modules, rank {'/'.join(map(str, ranks))}")
            else:
                lines.append(f"  {label}: none")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ metadata


def _json(value: Any, what: str, where: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ClifError(f"{where}: {what} is not JSON-serialisable ({err}); use plain numbers, strings, lists") from None


def build_metadata(cf: ConceptFile, where: str) -> dict[str, str]:
    """Every string metadata entry of the file (also used, minus `clif.format`, by the LoRA export)."""
    concepts = [
        {"name": c.name, "token": c.token, "class_word": c.class_word, "vectors": c.vectors} for c in cf.concepts
    ]
    meta = {
        "clif.format": FORMAT_NAME,
        "clif.version": str(FORMAT_VERSION),
        "clif.kind": cf.kind,
        "clif.concepts": _json(concepts, "the concept list", where),
        "clif.base_family": cf.base_family,
        "clif.base_fingerprint": cf.base_fingerprint,
        "clif.base_prediction_type": cf.base_prediction_type,
        "clif.encoder_widths": _json(cf.encoder_widths, "encoder_widths", where),
        "clif.lora_modules": _json(
            {"unet": len(lora_keys.lora_modules(cf.unet_lora)), "text": len(lora_keys.lora_modules(cf.text_lora))},
            "lora module counts", where,
        ),
        "clif.recipe": _json(cf.recipe, "the recipe", where),
        "clif.metadata": _json(cf.metadata, "metadata", where),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(cf.base_family, cf.base_prediction_type) + "/lora",
        "modelspec.implementation": _IMPLEMENTATIONS.get(cf.base_family, "diffusers"),
        "modelspec.title": cf.display_title(),
    }
    if cf.thumbnail is not None:
        meta["modelspec.thumbnail"] = "data:image/png;base64," + base64.b64encode(cf.thumbnail).decode("ascii")
    size = metadata_size(meta)
    if size > MAX_METADATA_BYTES:
        raise ClifError(
            f"{where}: the metadata would be {size // 1024} KiB; the limit is {MAX_METADATA_BYTES // 1024} KiB. "
            "Shorten the recipe or metadata, or use a smaller thumbnail"
        )
    return meta


def metadata_json(meta: Mapping[str, str], key: str, where: str, expected: type) -> Any:
    if key not in meta:
        raise ClifError(f"{where}: metadata {key!r} is missing; the file is damaged or was not written by CLIF")
    try:
        value = json.loads(meta[key])
    except ValueError as err:
        raise ClifError(f"{where}: metadata {key!r} is not valid JSON ({err}); the file is damaged") from None
    if not isinstance(value, expected):
        raise ClifError(f"{where}: metadata {key!r} should be a JSON {expected.__name__}; the file is damaged")
    return value


def _required(meta: Mapping[str, str], key: str, where: str) -> str:
    if key not in meta:
        raise ClifError(f"{where}: metadata {key!r} is missing; the file is damaged or was not written by CLIF")
    return meta[key]


def decode_thumbnail(meta: Mapping[str, str], where: str) -> Optional[bytes]:
    uri = meta.get("modelspec.thumbnail")
    if not uri:
        return None
    prefix = "data:image/png;base64,"
    if not uri.startswith(prefix):
        raise ClifError(f"{where}: modelspec.thumbnail is not a PNG data: URI; the file is damaged")
    try:
        return base64.b64decode(uri[len(prefix) :], validate=True)
    except ValueError:
        raise ClifError(f"{where}: modelspec.thumbnail is not valid base64; the file is damaged") from None


def concept_set_from_metadata(meta: Mapping[str, str], where: str) -> tuple[ConceptFile, list[dict]]:
    """A ConceptFile without tensors (concepts and LoRA empty) and the raw concept list, from metadata."""
    version_text = _required(meta, "clif.version", where)
    try:
        version = int(version_text)
    except ValueError:
        raise ClifError(f"{where}: clif.version {version_text!r} is not a number; the file is damaged") from None
    if version > FORMAT_VERSION:
        raise ClifError(
            f"{where} is concept file format version {version}, newer than this CLIF understands "
            f"(version {FORMAT_VERSION}); update the CLIF node pack"
        )
    if version < 1:
        raise ClifError(f"{where}: clif.version {version} is not a valid version; the file is damaged")
    concepts = metadata_json(meta, "clif.concepts", where, list)
    for i, c in enumerate(concepts):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("name", "token", "class_word")) \
                or not isinstance(c.get("vectors"), int):
            raise ClifError(f"{where}: entry {i} of clif.concepts lacks name, token, class_word or vectors")
    widths = metadata_json(meta, "clif.encoder_widths", where, dict)
    cf = ConceptFile(
        concepts=[],
        base_family=_required(meta, "clif.base_family", where),
        encoder_widths=widths,
        base_fingerprint=meta.get("clif.base_fingerprint", ""),
        base_prediction_type=meta.get("clif.base_prediction_type", "epsilon"),
        recipe=metadata_json(meta, "clif.recipe", where, dict),
        title=meta.get("modelspec.title", ""),
        thumbnail=decode_thumbnail(meta, where),
        kind=_required(meta, "clif.kind", where),
        metadata=metadata_json(meta, "clif.metadata", where, dict),
    )
    try:
        lora_keys.text_keys(cf.base_family)
    except ClifError as err:
        raise ClifError(f"{where}: metadata 'clif.base_family': {err}") from None
    return cf, concepts


def to_tensors(cf: ConceptFile) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for c in cf.concepts:
        for enc, emb in c.embeddings.items():
            tensors[f"{EMBEDDING_PREFIX}{c.embedding_name}.{enc}"] = emb
    tensors.update(cf.unet_lora)
    tensors.update(cf.text_lora)
    return tensors
