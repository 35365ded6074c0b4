"""Saving and loading concept files v1 (the format is `file_format`; docs/concept-file.md specifies it).

Both validate (`checks`): nothing invalid is written, and a file that loads is whole. A load given a base
model also checks the file fits it; fingerprint mismatches are warnings, not errors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from clif_core.errors import ClifError
from clif_core.fileio import save_safetensors_atomic

from . import lora_keys
from .checks import check_compatible, validate
from .file_format import (
    EMBEDDING_PREFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    ConceptEntry,
    ConceptFile,
    WarnFn,
    build_metadata,
    concept_set_from_metadata,
    embedding_name,
    metadata_json,
    to_tensors,
)
from .header import read_header, read_tensors

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

logger = logging.getLogger(__name__)


def save_concept_file(cf: ConceptFile, path: str | os.PathLike) -> Path:
    """Validate and write `cf` atomically as a v1 concept file; returns the path."""
    where = str(path)
    validate(cf, where)
    meta = build_metadata(cf, where)
    return save_safetensors_atomic(to_tensors(cf), path, meta)


def load_concept_file(
    path: str | os.PathLike, base: Optional[BaseModel] = None, warn: Optional[WarnFn] = None
) -> ConceptFile:
    """Read and check a v1 concept file; with `base` (a BaseModel) also check it fits that model.

    Fingerprint mismatches are not errors: they go to `warn` (default: this module's logger).
    """
    where = str(path)
    header = read_header(path, where)
    meta = header.get("__metadata__") or {}
    if meta.get("clif.format") != FORMAT_NAME:
        hint = ""
        if meta.get("clif.exported_from") == FORMAT_NAME:
            hint = " It is a LoRA exported from one; import it with its embeddings (clif_core.concepts.exports)."
        elif any(k.startswith(("lora_", "bundle_emb.")) or ".lora_" in k for k in header if k != "__metadata__"):
            hint = " It looks like a plain LoRA; import it with its embeddings (clif_core.concepts.exports)."
        raise ClifError(f"{where} is not a CLIF concept file (no clif.format = {FORMAT_NAME!r} metadata).{hint}")
    cf, concept_list = concept_set_from_metadata(meta, where)
    tensors = read_tensors(path, where)

    for entry in concept_list:
        word = embedding_name(entry["name"])
        embeddings = {}
        for enc in cf.encoder_widths:
            key = f"{EMBEDDING_PREFIX}{word}.{enc}"
            if key not in tensors:
                raise ClifError(f"{where}: tensor {key!r} of concept {entry['name']!r} is missing; the file is damaged")
            embeddings[enc] = tensors.pop(key)
            if embeddings[enc].dim() != 2 or embeddings[enc].shape[0] != entry["vectors"]:
                raise ClifError(
                    f"{where}: tensor {key!r} has shape {list(embeddings[enc].shape)} but the metadata says "
                    f"{entry['vectors']} vector(s); the file is damaged"
                )
        cf.concepts.append(ConceptEntry(entry["name"], entry["token"], entry["class_word"], embeddings))
    text_prefixes = tuple(k.kohya_prefix + "_" for k in lora_keys.text_keys(cf.base_family))
    for key in list(tensors):
        if key.startswith(lora_keys.UNET_PREFIX + "_"):
            cf.unet_lora[key] = tensors.pop(key)
        elif key.startswith(text_prefixes):
            cf.text_lora[key] = tensors.pop(key)
    if tensors:
        raise ClifError(
            f"{where}: unexpected tensors {sorted(tensors)[:5]} that concept file v{FORMAT_VERSION} does not "
            "define; the file is damaged or was edited by another tool"
        )
    counts = metadata_json(meta, "clif.lora_modules", where, dict)
    found = {"unet": len(lora_keys.lora_modules(cf.unet_lora)), "text": len(lora_keys.lora_modules(cf.text_lora))}
    for part, n in found.items():
        if counts.get(part) != n:
            raise ClifError(
                f"{where}: the metadata lists {counts.get(part)} {part} LoRA modules but the file holds {n}; "
                "tensors are missing or the file is damaged"
            )
    validate(cf, where)
    if base is not None:
        for message in check_compatible(cf, base, where):
            (warn or logger.warning)(message)
    return cf
