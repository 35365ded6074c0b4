"""Concept files to and from ComfyUI-native files: one embedding per concept plus one LoRA.

Embedding files (models/embeddings/<name>.safetensors, used as `embedding:<name>` in CLIPTextEncode):
    SD1 / SD2: {"emb_params": [k, width]}           as A1111 writes them; ComfyUI takes the only tensor
    SDXL:      {"clip_l": [k, 768], "clip_g": [k, 1280]}   ComfyUI picks each by its encoder's key
LoRA file (models/loras/<stem>.safetensors, stock LoraLoader): the concept file's kohya-layout LoRA.

The same two files load in diffusers: `pipe.load_lora_weights(lora_path)` and
`pipe.load_textual_inversion(embedding_path, token="<alice>")` (SDXL: pass `state_dict["clip_l"]` with
`text_encoder`/`tokenizer`, and `state_dict["clip_g"]` with `text_encoder_2`/`tokenizer_2`).

Both files carry CLIF metadata so that `import_comfy` rebuilds the concept file bit for bit; files made by
other tools import too, with names and tokens taken from the file names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from clif_core.errors import ClifError
from clif_core.fileio import save_safetensors_atomic

from . import lora_keys
from .checks import validate
from .file_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ConceptEntry,
    ConceptFile,
    build_metadata,
    concept_set_from_metadata,
    embedding_name,
    modelspec_architecture,
)
from .header import read_header, read_tensors

SINGLE_ENCODER_KEY = "emb_params"


def embedding_tensors(cf: ConceptFile, concept: ConceptEntry) -> dict[str, torch.Tensor]:
    """The tensors of one concept's ComfyUI embedding file."""
    if len(concept.embeddings) == 1:
        return {SINGLE_ENCODER_KEY: next(iter(concept.embeddings.values()))}
    return dict(concept.embeddings)


def export_comfy(
    cf: ConceptFile,
    embeddings_dir: str | os.PathLike,
    loras_dir: str | os.PathLike,
    stem: str,
    overwrite: bool = False,
) -> list[Path]:
    """Write `<loras_dir>/<stem>.safetensors` (when the set has a LoRA) and one
    `<embeddings_dir>/<embedding name>.safetensors` per concept. Returns the written paths, LoRA first.

    Nothing is written when any target exists and `overwrite` is False.
    """
    where = f"concepts {cf.display_title()!r}"
    validate(cf, where)
    lora = {**cf.unet_lora, **cf.text_lora}
    planned: list[tuple[Path, dict[str, torch.Tensor], dict[str, str]]] = []
    if lora:
        meta = build_metadata(cf, where)
        del meta["clif.format"]
        meta["clif.exported_from"] = FORMAT_NAME
        planned.append((Path(loras_dir) / f"{stem}.safetensors", lora, meta))
    arch = modelspec_architecture(cf.base_family, cf.base_prediction_type)
    for c in cf.concepts:
        meta = {
            "clif.exported_from": FORMAT_NAME,
            "clif.version": str(FORMAT_VERSION),
            "clif.concept": json.dumps({"name": c.name, "token": c.token, "class_word": c.class_word},
                                       sort_keys=True, ensure_ascii=False),
            "clif.base_family": cf.base_family,
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": arch + "/textual-inversion",
            "modelspec.title": c.name,
        }
        planned.append((Path(embeddings_dir) / f"{c.embedding_name}.safetensors", embedding_tensors(cf, c), meta))
    existing = [str(p) for p, _, _ in planned if p.exists()]
    if existing and not overwrite:
        raise ClifError(
            f"export of {where} would replace {', '.join(existing)}; choose another name or allow overwriting"
        )
    for path, tensors, meta in planned:
        save_safetensors_atomic(tensors, path, meta)
    return [p for p, _, _ in planned]


def _infer_family(per_encoder: dict[str, torch.Tensor], where: str) -> str:
    if "clip_g" in per_encoder:
        return "sdxl"
    if "clip_h" in per_encoder:
        return "sd2"
    width = int(next(iter(per_encoder.values())).shape[-1])
    if width == 768:
        return "sd1"
    if width == 1024:
        return "sd2"
    raise ClifError(
        f"{where}: cannot tell the model family from a {width}-wide embedding; pass the family (sd1, sd2, sdxl)"
    )


def _read_embedding(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one embedding file; only .safetensors is read (never a pickle)."""
    where = str(path)
    if path.suffix.lower() != ".safetensors":
        raise ClifError(
            f"{where}: only .safetensors embeddings are imported (a .pt/.bin file would need unpickling); "
            "convert it to .safetensors first"
        )
    meta = read_header(path, where).get("__metadata__") or {}
    tensors = read_tensors(path, where)
    if not tensors:
        raise ClifError(f"{where}: the file holds no tensors; it is not an embedding")
    return tensors, meta


def _split_encoders(tensors: dict[str, torch.Tensor], family: str, where: str) -> dict[str, torch.Tensor]:
    """Map an embedding file's tensors to the family's encoder names."""
    encoders = [k.name for k in lora_keys.text_keys(family)]
    if all(e in tensors for e in encoders):
        return {e: tensors[e] for e in encoders}
    if len(encoders) == 1 and len(tensors) == 1:
        return {encoders[0]: next(iter(tensors.values()))}
    raise ClifError(
        f"{where}: holds {sorted(tensors)} but a {family} embedding needs "
        + (f"one tensor ({SINGLE_ENCODER_KEY!r})" if len(encoders) == 1 else " and ".join(map(repr, encoders)))
    )


def import_comfy(
    lora_path: Optional[str | os.PathLike],
    embedding_paths: Sequence[str | os.PathLike],
    family: Optional[str] = None,
) -> ConceptFile:
    """A ConceptFile from a LoRA file (or None) and embedding files, as `export_comfy` writes them.

    Files from `export_comfy` restore every field exactly. Other files work too: the concept name is the
    embedding's file name, its token `<name>`, its class word empty; the family comes from `family`, the
    files' CLIF metadata or the embedding shapes. The LoRA must be in the kohya layout with diffusers module
    names (what this pack, kohya-ss for SD1 and most SD1 trainers write). (Over 60 lines: one linear run of
    reads and checks of the two kinds of input file, each refusal with its own message.)
    """
    paths = [Path(p) for p in embedding_paths]
    cf: Optional[ConceptFile] = None
    listed: Optional[list[dict]] = None
    lora: dict[str, torch.Tensor] = {}
    if lora_path is not None:
        where = str(lora_path)
        meta = read_header(lora_path, where).get("__metadata__") or {}
        if meta.get("clif.exported_from") == FORMAT_NAME:
            cf, listed = concept_set_from_metadata(meta, where)
        lora = read_tensors(lora_path, where)
        if not all(k.startswith("lora_") for k in lora):
            odd = sorted(k for k in lora if not k.startswith("lora_"))[:3]
            raise ClifError(
                f"{where}: keys such as {odd} are not in the kohya layout (lora_unet_…, lora_te…); "
                "only kohya-layout LoRAs can be imported"
            )

    read = [(p, *_read_embedding(p)) for p in paths]
    if cf is None:
        fam = family or next((m["clif.base_family"] for _, _, m in read if "clif.base_family" in m), None)
        if fam is None:
            if not read:
                raise ClifError(f"{lora_path}: no CLIF metadata and no embeddings; pass the family (sd1, sd2, sdxl)")
            p, tensors, _ = read[0]
            fam = _infer_family(tensors, str(p))
        cf = ConceptFile(concepts=[], base_family=fam, encoder_widths={})
    elif family is not None and family != cf.base_family:
        raise ClifError(f"{lora_path} was exported for {cf.base_family}, not {family}")

    entries: dict[str, ConceptEntry] = {}
    for p, tensors, meta in read:
        per_encoder = _split_encoders(tensors, cf.base_family, str(p))
        info = json.loads(meta["clif.concept"]) if "clif.concept" in meta else {}
        name = info.get("name", p.stem)
        entry = ConceptEntry(name, info.get("token", f"<{embedding_name(name)}>"), info.get("class_word", ""),
                             per_encoder)
        if entry.embedding_name in entries:
            raise ClifError(f"{p}: a second embedding for concept {name!r}; give each concept one file")
        entries[entry.embedding_name] = entry

    if listed is not None:
        missing = [c["name"] for c in listed if embedding_name(c["name"]) not in entries]
        if missing:
            raise ClifError(
                f"{lora_path} belongs with the embeddings of {', '.join(missing)}, which were not given; "
                f"pass their files (models/embeddings/<name>.safetensors)"
            )
        cf.concepts = [entries.pop(embedding_name(c["name"])) for c in listed]
    cf.concepts.extend(entries.values())
    if not cf.encoder_widths:
        if not cf.concepts:
            raise ClifError(f"{lora_path}: no embeddings given, so the text encoder widths are unknown")
        cf.encoder_widths = {e: int(t.shape[1]) for e, t in cf.concepts[0].embeddings.items()}

    text_prefixes = tuple(k.kohya_prefix + "_" for k in lora_keys.text_keys(cf.base_family))
    for key, value in lora.items():
        if key.startswith(lora_keys.UNET_PREFIX + "_"):
            cf.unet_lora[key] = value
        elif key.startswith(text_prefixes):
            cf.text_lora[key] = value
        else:
            raise ClifError(
                f"{lora_path}: key {key!r} is not a {cf.base_family} UNet or text-encoder LoRA key "
                f"(expected lora_unet_ or {', '.join(text_prefixes)})"
            )
    validate(cf, str(lora_path) if lora_path is not None else "imported embeddings")
    return cf
