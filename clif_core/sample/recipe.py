"""The recipe of a sampling run, and PNG files that carry it.

A recipe is a JSON-serialisable dict: prompts, seed, scheduler, steps, cfg, size, the base model (family and
fingerprint) and every concept file or erasure patch with its content fingerprint and strength. `save_png`
writes it into the PNG's text chunks twice: as JSON under `clif.recipe` (read back by `read_png_recipe`) and
as an A1111-style `parameters` text, which image browsers and model sites already show.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from clif_core.errors import ClifError
from clif_core.fileio import atomic_path

RECIPE_FORMAT = "clif.sample/1"
PNG_KEY = "clif.recipe"


def concept_file_fingerprint(cf: Any) -> str:
    """SHA-256 (first 16 hex digits) of a concept file's tensors: names, dtypes, shapes and bytes, in name order.

    It identifies the file's content however it was named, copied or re-saved.
    """
    from clif_core.concepts.file_format import to_tensors

    digest = hashlib.sha256()
    tensors = to_tensors(cf)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def image_recipe(recipe: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The recipe that reproduces image `index` of a batch on its own (its seed, batch 1)."""
    batch = int(recipe.get("batch", 1))
    if not 0 <= index < batch:
        raise ClifError(f"image index {index} is outside the recipe's batch of {batch}")
    single = copy.deepcopy(dict(recipe))
    single["seed"] = int(recipe["seed"]) + index
    single["batch"] = 1
    return single


def a1111_parameters(recipe: Mapping[str, Any]) -> str:
    """The recipe as the "parameters" text A1111-style tools write and read."""
    from .schedulers import LABELS

    lines = [str(recipe.get("prompt", ""))]
    if recipe.get("negative_prompt"):
        lines.append(f"Negative prompt: {recipe['negative_prompt']}")
    fields = [
        f"Steps: {recipe.get('steps')}",
        f"Sampler: {LABELS.get(recipe.get('scheduler'), recipe.get('scheduler'))}",
        f"CFG scale: {recipe.get('cfg')}",
        f"Seed: {recipe.get('seed')}",
        f"Size: {recipe.get('width')}x{recipe.get('height')}",
    ]
    base = recipe.get("base") or {}
    if base.get("fingerprint"):
        fields.append(f"Model hash: {base['fingerprint']}")
    for c in recipe.get("concepts", []):
        kind = c.get("kind", "concepts")
        fields.append(f"CLIF {kind}: {c.get('title')} ({c.get('fingerprint')}) @ {c.get('strength')}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def save_png(image: Any, path: str | os.PathLike, recipe: Mapping[str, Any],
             extra_text: Optional[Mapping[str, str]] = None) -> Path:
    """Write a PIL image as PNG with `recipe` in its text chunks (atomically). `extra_text` adds chunks (e.g.
    ComfyUI's "prompt" and "workflow")."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PNG_KEY, json.dumps(recipe, sort_keys=True))
    info.add_text("parameters", a1111_parameters(recipe))
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_png_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe stored by `save_png`; ClifError if the PNG has none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", {}) or {})
    except (OSError, UnidentifiedImageError) as err:
        raise ClifError(f"{path}: cannot be read as an image ({err})") from None
    if PNG_KEY not in text:
        raise ClifError(f"{path} carries no CLIF recipe (no {PNG_KEY!r} text chunk); it was not saved by CLIF "
                        "or its metadata was stripped")
    try:
        recipe = json.loads(text[PNG_KEY])
    except ValueError:
        raise ClifError(f"{path}: its {PNG_KEY!r} text chunk is not valid JSON; the file was edited or "
                        "damaged") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise ClifError(f"{path}: its recipe is not a {RECIPE_FORMAT} recipe")
    return recipe
