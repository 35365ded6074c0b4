"""What a concept is before training: a name, a placeholder token, a class word and a few images.

Images come from a folder (PNG, JPEG, WebP in any mode, EXIF orientation applied) or from tensors in
ComfyUI's IMAGE/MASK layout. Every image is stored as an RGB PIL image; transparency becomes the mask
(when no mask file is given) and the transparent area is composited on white, the background the
augmented compositions use.

Mask convention for folders (one place only, so there is nothing to guess)::

    alice/
      photo1.jpg
      photo2.png            (RGBA: its alpha is the mask unless masks/photo2.png exists)
      masks/photo1.png      whole-concept mask of photo1.jpg (white = concept)
      masks/photo1.hair.png optional named part masks: masks/<stem>.<part>.png

Bad input raises `ClifError` naming the file or field; unreadable files are skipped with a warning
that lists them, and an error follows only when nothing usable is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ClifError
from ..images import MIN_SIDE, PictureRefused, check_min_side, guarded_open
from ..progress import SILENT, Reporter
from .file_format import embedding_name

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MASK_FOLDER = "masks"
MAX_SIDE = 2048
"""Larger images are downscaled on load: compositions and SAM never use more."""

_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]*$")


@dataclass
class Concept:
    """One user concept.

    `masks[i]` is a bool [H, W] array for `images[i]` (True = concept) or None when unknown.
    `part_masks[i]` maps part names to bool masks the user drew for `images[i]` (usually empty).
    `parts` names the parts to look for, top to bottom ("hair", "face", "dress"); automatic part
    regions are matched to it in that order. `sources[i]` says where `images[i]` came from, for messages.
    """

    name: str
    token: str
    class_word: str
    images: list[Image.Image]
    masks: list[Optional[np.ndarray]] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    part_masks: list[dict[str, np.ndarray]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not self.masks:
            self.masks = [None] * n
        if not self.part_masks:
            self.part_masks = [{} for _ in range(n)]
        if not self.sources:
            self.sources = [f"{self.name} image {i}" for i in range(n)]
        for field_name in ("masks", "part_masks", "sources"):
            if len(getattr(self, field_name)) != n:
                raise ClifError(
                    f"concept {self.name!r}: {field_name} has {len(getattr(self, field_name))} entries but "
                    f"there are {n} images; give one entry per image (None where there is no mask)."
                )


# --------------------------------------------------------------------------------------------- images


def _to_uint8_gray(im: Image.Image) -> Image.Image:
    """16-bit and float grayscale would be clipped by PIL's convert("L"); scale them instead."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if arr.max() <= 1.0 else 255.0
    else:
        top = 65535.0 if arr.max() > 255 else 255.0
    return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")


def flatten_image(im: Image.Image) -> tuple[Image.Image, Optional[np.ndarray]]:
    """Any PIL image → (RGB composited on white, alpha>127 mask or None when fully opaque)."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_uint8_gray(im)
    elif im.mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        a = rgba[..., 3]
        mask = None if a.min() >= 255 else a > 127
        return Image.fromarray(rgb, "RGB"), mask
    return im.convert("RGB"), None


def read_image(path: str | Path) -> tuple[Image.Image, Optional[np.ndarray], bool]:
    """Read one image file fully (truncation is detected here, not later) with EXIF orientation applied.

    Returns (RGB image, alpha mask or None, whether the EXIF orientation swapped width and height).
    Raises PictureRefused (also for a decompression bomb) or OSError/ValueError for unreadable files; the
    folder loader turns those into warnings naming the file.
    """
    path = Path(path)
    with guarded_open(path, "picture") as probe:
        probe.verify()  # catches truncated PNGs and bad CRCs that load() may tolerate
    with guarded_open(path, "picture") as im:
        im.load()
        upright = ImageOps.exif_transpose(im)
        rgb, alpha_mask = flatten_image(upright)
        return rgb, alpha_mask, upright.size != im.size


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to (width, height) with nearest-neighbour sampling."""
    if mask.shape == (size[1], size[0]):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def _limit_size(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def read_mask(path: Path, image_size: tuple[int, int], what: str, exif_rotated: bool = False) -> np.ndarray:
    """Read a mask file (white = inside; alpha is used when the file has transparency) as bool [H, W]."""
    try:
        with guarded_open(path, "mask file") as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                alpha = np.asarray(im.convert("RGBA"))[..., 3]
                if alpha.min() < 255:
                    mask = alpha > 127
                else:
                    mask = np.asarray(im.convert("L")) > 127
            elif im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                mask = np.asarray(_to_uint8_gray(im)) > 127
            else:
                mask = np.asarray(im.convert("L")) > 127
    except (OSError, UnidentifiedImageError, ValueError, PictureRefused) as exc:
        raise ClifError(f"mask file {path} ({what}) cannot be read: {exc}. Save it again as a PNG.") from None
    w, h = image_size
    if mask.shape != (h, w):
        hint = ""
        if exif_rotated:
            hint = " The image is rotated by its EXIF orientation tag: the mask must match the image as displayed."
        raise ClifError(
            f"mask file {path} is {mask.shape[1]}x{mask.shape[0]} but its image ({what}) is {w}x{h}.{hint} "
            f"Save the mask at the image's size."
        )
    if not mask.any():
        raise ClifError(
            f"mask file {path} ({what}) is empty: no pixel is white. Paint the concept white on black, "
            f"or delete the mask to have it computed."
        )
    return mask


@dataclass
class ImageFolder:
    """Images read from one folder, with the alpha-derived masks and the names of skipped files.

    `sizes[i]` is the upright size of file i before any downscaling (the size its mask files must
    have); `rotated[i]` tells whether the EXIF orientation swapped width and height.
    """

    images: list[Image.Image]
    alpha_masks: list[Optional[np.ndarray]]
    paths: list[Path]
    sizes: list[tuple[int, int]]
    rotated: list[bool]
    skipped: list[str]


def read_image_folder(
    folder: str | Path, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE, reporter: Reporter = SILENT
) -> ImageFolder:
    """Every PNG/JPEG/WebP file directly in `folder`, sorted by name; unreadable ones are skipped.

    Raises ClifError for a missing/empty folder, for an image smaller than `min_side`, and when no
    readable image is left (the message lists what was skipped and why). Images longer than
    `max_side` are downscaled (with their alpha masks).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ClifError(f"image folder {folder} does not exist or is not a folder; give the folder that holds the images.")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    out = ImageFolder([], [], [], [], [], [])
    for path in entries:
        if path.is_dir():
            if path.name != MASK_FOLDER:
                out.skipped.append(f"{path.name}/ (a subfolder; only files directly in the folder are read)")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            out.skipped.append(f"{path.name} (not a PNG, JPEG or WebP file)")
            continue
        try:
            img, alpha, rotated = read_image(path)
        except PictureRefused as exc:
            out.skipped.append(f"{path.name} ({exc})")
            continue
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            out.skipped.append(f"{path.name} ({type(exc).__name__}: {exc})")
            continue
        check_min_side(img.size, f"image {path}", min_side)
        if alpha is not None and not alpha.any():
            raise ClifError(
                f"image {path} is fully transparent, so its alpha channel gives an empty mask. "
                f"Save it without transparency or with the concept opaque."
            )
        out.sizes.append(img.size)
        out.rotated.append(rotated)
        img = _limit_size(img, max_side)
        out.images.append(img)
        out.alpha_masks.append(None if alpha is None else resize_mask(alpha, img.size))
        out.paths.append(path)
    if out.skipped:
        reporter.log(f"warning: skipped {len(out.skipped)} file(s) in {folder}: " + "; ".join(out.skipped))
    if not out.images:
        if not entries:
            raise ClifError(f"image folder {folder} is empty; put the concept's PNG, JPEG or WebP pictures in it.")
        raise ClifError(
            f"no readable image in {folder}: " + "; ".join(out.skipped) + ". Add PNG, JPEG or WebP pictures."
        )
    return out


# ------------------------------------------------------------------------------------------- concepts


def _check_names(name: str, token: str, class_word: str, parts: Sequence[str]) -> None:
    if not name or not name.strip():
        raise ClifError("concept name is empty; give each concept a name.")
    embedding_name(name)  # a name such as '..' (a folder's) cannot name the concept's files: refused before work
    if not token or not token.strip() or any(c.isspace() for c in token):
        raise ClifError(
            f"concept {name!r}: placeholder token {token!r} must be one word without spaces, e.g. '<{name}>'."
        )
    if not class_word or not class_word.strip():
        raise ClifError(f"concept {name!r}: class word is empty; give what it is, e.g. 'man', 'dog', 'cartoon girl'.")
    for part in parts:
        if not _PART_NAME.match(part):
            raise ClifError(
                f"concept {name!r}: part name {part!r} must be letters, digits, spaces, '-' or '_' (e.g. 'hair')."
            )


def load_concept_folder(
    folder: str | Path,
    token: str,
    class_word: str,
    name: Optional[str] = None,
    parts: Sequence[str] = (),
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    reporter: Reporter = SILENT,
) -> Concept:
    """A concept from a folder of pictures plus optional masks in `<folder>/masks/` (see module doc).
    (Over 60 lines: one pass over the pictures pairing each with its masks, every refusal with its own message.)"""
    folder = Path(folder)
    name = name or folder.name
    parts = [p.strip() for p in parts if p.strip()]
    _check_names(name, token, class_word, parts)
    read = read_image_folder(folder, min_side=min_side, max_side=max_side, reporter=reporter)

    mask_dir = folder / MASK_FOLDER
    mask_files = (
        {p.name: p for p in mask_dir.iterdir() if p.is_file() and not p.name.startswith(".")} if mask_dir.is_dir() else {}
    )
    used: set[str] = set()
    stems = {p.stem for p in read.paths}
    masks: list[Optional[np.ndarray]] = []
    part_masks: list[dict[str, np.ndarray]] = []
    for img, alpha, path, size, rotated in zip(read.images, read.alpha_masks, read.paths, read.sizes, read.rotated):
        stem = path.stem
        whole = mask_files.get(f"{stem}.png")
        mask = alpha
        if whole is not None:
            used.add(whole.name)
            mask = resize_mask(read_mask(whole, size, path.name, rotated), img.size)
        named: dict[str, np.ndarray] = {}
        for fname, fpath in sorted(mask_files.items()):
            if not (fname.startswith(stem + ".") and fname.lower().endswith(".png")) or fname[:-4] in stems:
                continue
            part = fname[len(stem) + 1 : -4]
            if not _PART_NAME.match(part):
                continue
            if parts and part not in parts:
                raise ClifError(
                    f"part mask {fpath} names part {part!r}, which is not in the part list {parts} of concept "
                    f"{name!r}. Rename the file or add the part to the list."
                )
            used.add(fname)
            named[part] = resize_mask(read_mask(fpath, size, path.name, rotated), img.size)
        masks.append(mask)
        part_masks.append(named)
    orphans = sorted(set(mask_files) - used)
    if orphans:
        reporter.log(
            f"warning: {len(orphans)} file(s) in {mask_dir} match no image and were ignored: " + ", ".join(orphans)
            + ". A mask is named after its image: masks/<image stem>.png or masks/<image stem>.<part>.png."
        )
    if not parts:
        found: list[str] = []
        for named in part_masks:
            found += [p for p in named if p not in found]
        parts = found
    return Concept(
        name=name,
        token=token.strip(),
        class_word=class_word.strip(),
        images=read.images,
        masks=masks,
        parts=list(parts),
        part_masks=part_masks,
        sources=[str(p) for p in read.paths],
    )


def concept_from_tensors(
    name: str,
    token: str,
    class_word: str,
    images: Any,
    masks: Any = None,
    parts: Sequence[str] = (),
    min_side: int = MIN_SIDE,
) -> Concept:
    """A concept from ComfyUI-layout tensors: IMAGE float [B, H, W, 3] in 0..1, MASK [B, H, W] or [H, W].

    `masks` may also be a list with one entry per image, None where that image has no mask.
    MASK here means 1 = concept. (ComfyUI's LoadImage emits 1 − alpha, i.e. 1 where the picture is
    transparent, so a node feeding cut-outs must invert it first.) Plain torch tensors or numpy arrays;
    ComfyUI itself is not imported. (Over 60 lines: one linear run of input checks, each with its own message.)
    """
    import torch

    parts = [p.strip() for p in parts if p.strip()]
    _check_names(name, token, class_word, parts)
    x = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] not in (3, 4) or x.shape[0] == 0:
        raise ClifError(
            f"concept {name!r}: images must be an IMAGE batch shaped [B, H, W, 3]; got {tuple(x.shape)}."
        )
    if not torch.isfinite(x).all():
        raise ClifError(f"concept {name!r}: images contain NaN or infinite values.")
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    check_min_side((w, h), f"concept {name!r}: each image", min_side)
    m: list = [None] * b
    if masks is not None:
        if isinstance(masks, (list, tuple)):
            m = [None if x is None else torch.as_tensor(x).detach().to("cpu", torch.float32) for x in masks]
        else:
            batch = torch.as_tensor(masks).detach().to("cpu", torch.float32)
            if batch.ndim == 2:
                batch = batch.unsqueeze(0)
            if batch.ndim != 3:
                raise ClifError(f"concept {name!r}: masks must be a MASK batch shaped [B, H, W]; got {tuple(batch.shape)}.")
            m = list(batch)
        bad = [tuple(x.shape) for x in m if x is not None and x.ndim != 2]
        if bad:
            raise ClifError(f"concept {name!r}: each mask must be shaped [H, W]; got {bad[0]}.")
        if len(m) != b:
            raise ClifError(
                f"concept {name!r}: {len(m)} mask(s) for {b} image(s); give one mask per image or none."
            )
    pil_images: list[Image.Image] = []
    pil_masks: list[Optional[np.ndarray]] = []
    for i in range(b):
        arr = np.round(x[i].clamp(0, 1).numpy() * 255.0).astype(np.uint8)
        mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
        img, alpha = flatten_image(Image.fromarray(arr, mode))
        mask = alpha
        if m[i] is not None:
            if tuple(m[i].shape) != (h, w):
                raise ClifError(
                    f"concept {name!r}: masks[{i}] is {m[i].shape[1]}x{m[i].shape[0]} but images[{i}] is {w}x{h}; "
                    f"resize the mask to the image."
                )
            mask = m[i].numpy() > 0.5
            if not mask.any():
                raise ClifError(
                    f"concept {name!r}: masks[{i}] is empty (no value above 0.5). Paint the concept, "
                    f"or pass no mask to have it computed."
                )
        if mask is not None and not mask.any():
            raise ClifError(f"concept {name!r}: images[{i}] is fully transparent.")
        pil_images.append(img)
        pil_masks.append(mask)
    return Concept(
        name=name,
        token=token.strip(),
        class_word=class_word.strip(),
        images=pil_images,
        masks=pil_masks,
        parts=list(parts),
        sources=[f"{name} images[{i}]" for i in range(b)],
    )


def validate_concepts(concepts: Sequence[Concept]) -> None:
    """Checks across concepts: unique names and tokens, a token that is not a class word, masks matching images."""
    if not concepts:
        raise ClifError("no concept given; add at least one concept.")
    by_token: dict[str, str] = {}
    by_name: set[str] = set()
    class_words = {c.class_word.lower() for c in concepts}
    for c in concepts:
        _check_names(c.name, c.token, c.class_word, c.parts)
        if c.name in by_name:
            raise ClifError(f"two concepts are named {c.name!r}; give each concept its own name.")
        by_name.add(c.name)
        if c.token in by_token:
            raise ClifError(
                f"placeholder token {c.token!r} is used by two concepts, {by_token[c.token]!r} and {c.name!r}; "
                f"give each concept its own token."
            )
        by_token[c.token] = c.name
        if c.token.lower() in class_words:
            raise ClifError(
                f"concept {c.name!r}: placeholder token {c.token!r} equals a class word; the token must be a new "
                f"word such as '<{c.name}>'."
            )
        if not c.images:
            raise ClifError(f"concept {c.name!r} has no images.")
        for i, (img, mask) in enumerate(zip(c.images, c.masks)):
            if img.mode != "RGB":
                raise ClifError(f"concept {c.name!r}: {c.sources[i]} is mode {img.mode}; images must be RGB.")
            w, h = img.size
            for what, mk in [("mask", mask)] + [(f"part mask {p!r}", pm) for p, pm in c.part_masks[i].items()]:
                if mk is None:
                    continue
                if mk.shape != (h, w):
                    raise ClifError(
                        f"concept {c.name!r}: the {what} of {c.sources[i]} is {mk.shape[1]}x{mk.shape[0]} but the "
                        f"image is {w}x{h}."
                    )
                if not mk.any():
                    raise ClifError(f"concept {c.name!r}: the {what} of {c.sources[i]} is empty.")


def _tokenizer_of(obj: Any) -> Any:
    """Accept a tokenizer or anything carrying one (e.g. models.base.TextEncoderSlot)."""
    return getattr(obj, "tokenizer", None) or obj


def check_tokens(concepts: Sequence[Concept], tokenizers: Iterable[Any]) -> None:
    """Refuse placeholder tokens a tokenizer already knows (an added token, or one whole vocabulary word).

    Training a known word's embedding would change what that word means everywhere else.
    """
    validate_concepts(concepts)
    for tok_obj in tokenizers:
        tok = _tokenizer_of(tok_obj)
        label = getattr(tok_obj, "name", None) or type(tok).__name__
        added = tok.get_added_vocab() if hasattr(tok, "get_added_vocab") else {}
        special = set(getattr(tok, "all_special_tokens", []) or [])
        for c in concepts:
            if c.token in added or c.token in special:
                raise ClifError(
                    f"concept {c.name!r}: placeholder token {c.token!r} is already added to tokenizer {label} "
                    f"(another concept file loaded with it?). Pick another token."
                )
            pieces = tok.tokenize(c.token)
            unk = getattr(tok, "unk_token_id", None)
            if len(pieces) == 1 and tok.convert_tokens_to_ids(pieces[0]) != unk:
                raise ClifError(
                    f"concept {c.name!r}: placeholder token {c.token!r} is an existing word of tokenizer {label}; "
                    f"training it would change that word everywhere. Pick a rare token such as '<{c.name}>'."
                )
