"""Common concepts: things the base model already knows ("chef", "dog", "jean jacket").

Their pictures come from a user folder (`<folder>/<word>/*.png`; spaces in a word may be written as
underscores in the folder name) or are generated once by the base model from "a photo of {word}"
through a `generate(prompt, n, seed) -> list[PIL.Image]` callable, and cached on disk under a key made
of the base model's fingerprint, the prompt, the count and the seed. A changed base model therefore
never reuses another model's pictures.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from ..concepts.spec import MIN_SIDE, read_image_folder
from ..errors import ClifError
from ..fileio import atomic_dir
from ..progress import SILENT, Reporter

if TYPE_CHECKING:
    from ..models.base import BaseModel

GenerateFn = Callable[[str, int, int], list]
"""generate(prompt, n, seed) -> n PIL images."""

PROMPT_TEMPLATE = "a photo of {word}"


@dataclass
class CommonConcept:
    """Pictures of one common word. `generated`: made by the base model rather than given by the user;
    such a picture is used whole when the segmenter finds no subject in it."""

    word: str
    images: list[Image.Image]
    masks: list[Optional[np.ndarray]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    generated: bool = False

    def __post_init__(self) -> None:
        if not self.masks:
            self.masks = [None] * len(self.images)
        if not self.sources:
            self.sources = [f"common word {self.word!r} image {i}" for i in range(len(self.images))]


def clean_words(words: Sequence[str]) -> list[str]:
    out: list[str] = []
    for w in words:
        w = " ".join(w.split())
        if w and w not in out:
            out.append(w)
    return out


def _word_folder(root: Path, word: str) -> Optional[Path]:
    for candidate in (word, word.replace(" ", "_"), word.replace(" ", "-")):
        if (root / candidate).is_dir():
            return root / candidate
    return None


def load_common_folder(
    folder: str | Path, words: Sequence[str] = (), min_side: int = MIN_SIDE, reporter: Reporter = SILENT
) -> list[CommonConcept]:
    """Common concepts from `<folder>/<word>/`; all subfolders when `words` is empty."""
    root = Path(folder)
    if not root.is_dir():
        raise ClifError(f"common-concept folder {root} does not exist; it should hold one subfolder of pictures per word.")
    words = clean_words(words) or sorted(
        p.name.replace("_", " ") for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not words:
        raise ClifError(f"common-concept folder {root} has no subfolders; make one per word, e.g. {root}/chef/.")
    out = []
    for word in words:
        sub = _word_folder(root, word)
        if sub is None:
            raise ClifError(f"common word {word!r} has no folder in {root}; add {root / word}/ with its pictures.")
        read = read_image_folder(sub, min_side=min_side, reporter=reporter)
        out.append(CommonConcept(word, read.images, read.alpha_masks, [str(p) for p in read.paths]))
    return out


def cache_key(fingerprint: str, prompt: str, n: int, seed: int) -> str:
    payload = json.dumps({"fingerprint": fingerprint, "prompt": prompt, "n": n, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _slug(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", word).strip("_")[:40] or "word"


def generate_common(
    words: Sequence[str],
    generate: GenerateFn,
    fingerprint: str,
    cache_dir: str | Path,
    n: int = 4,
    seed: int = 0,
    template: str = PROMPT_TEMPLATE,
    reporter: Reporter = SILENT,
) -> list[CommonConcept]:
    """Pictures of each word from the cache, generating (and caching, atomically) the missing ones."""
    if not fingerprint:
        raise ClifError("generating common-concept pictures needs the base model's fingerprint for the cache key.")
    if "{word}" not in template:
        raise ClifError(f"common-concept prompt template {template!r} must contain {{word}}.")
    cache = Path(cache_dir)
    out = []
    words = clean_words(words)
    for i, word in enumerate(words):
        reporter.check_cancel()
        prompt = template.format(word=word)
        entry = cache / f"{_slug(word)}-{cache_key(fingerprint, prompt, n, seed)}"
        images = _read_cache(entry, n, reporter)
        if images is None:
            reporter.log(f"generating {n} picture(s) of {word!r} ({prompt!r}, seed {seed})")
            images = [im.convert("RGB") for im in generate(prompt, n, seed)]
            if len(images) != n:
                raise ClifError(f"the generator returned {len(images)} picture(s) of {word!r}; {n} were asked for.")
            _write_cache(entry, images, {"word": word, "prompt": prompt, "n": n, "seed": seed, "fingerprint": fingerprint})
        out.append(CommonConcept(word, images, sources=[str(entry / f"{j:03d}.png") for j in range(n)], generated=True))
        reporter.progress(i + 1, len(words), images[0])
    return out


def _read_cache(entry: Path, n: int, reporter: Reporter) -> Optional[list[Image.Image]]:
    if not (entry / "info.json").is_file():
        return None
    try:
        images = []
        for j in range(n):
            with Image.open(entry / f"{j:03d}.png") as im:
                images.append(im.convert("RGB"))
        return images
    except OSError as exc:
        reporter.log(f"warning: cached pictures in {entry} are damaged ({exc}); generating them again")
        shutil.rmtree(entry, ignore_errors=True)
        return None


def _write_cache(entry: Path, images: list[Image.Image], info: dict) -> None:
    """Written as a whole folder (a crash leaves no half entry)."""
    with atomic_dir(entry) as tmp:
        for j, im in enumerate(images):
            im.save(tmp / f"{j:03d}.png")
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")


def resolve_common(
    words: Sequence[str] = (),
    folder: Optional[str | Path] = None,
    generate: Optional[GenerateFn] = None,
    fingerprint: str | Callable[[], str] = "",
    cache_dir: Optional[str | Path] = None,
    n: int = 4,
    seed: int = 0,
    min_side: int = MIN_SIDE,
    reporter: Reporter = SILENT,
) -> list[CommonConcept]:
    """Words with a folder use it; the rest are generated (and cached). Missing both is an error.

    `fingerprint` may be a callable, asked only when some word needs generating (it may load the model).
    """
    words = clean_words(words)
    found: dict[str, CommonConcept] = {}
    if folder is not None:
        root = Path(folder)
        if words:
            available = [w for w in words if _word_folder(root, w) is not None]
            loaded = load_common_folder(root, available, min_side, reporter) if available else []
        else:
            loaded = load_common_folder(root, (), min_side, reporter)
            words = [c.word for c in loaded]
        found = {c.word: c for c in loaded}
    missing = [w for w in words if w not in found]
    if missing:
        if generate is None or cache_dir is None:
            where = f" in {folder}" if folder is not None else ""
            raise ClifError(
                f"common word(s) {missing} have no pictures{where}; add a folder per word or connect a base model "
                f"to generate them."
            )
        if callable(fingerprint):
            fingerprint = fingerprint()
        for c in generate_common(missing, generate, fingerprint, cache_dir, n=n, seed=seed, reporter=reporter):
            found[c.word] = c
    return [found[w] for w in words]


def lazy_model_generator(
    load_base: Callable[[], "BaseModel"], steps: int = 25, cfg: float = 7.0, reporter: Reporter = SILENT
) -> tuple[GenerateFn, Callable[[], str]]:
    """(generate, fingerprint) for `resolve_common` over a base model that is loaded only when first needed.

    Pictures are drawn by the pack's sampler (`clif_core.sample.sampler.make_generate`: the sampler's default
    scheduler, `steps`, `cfg`, the model's native size; picture j from seed `seed + j`). Nothing is loaded
    when every word has a folder; a word without one needs the fingerprint (the cache key: the model and
    the settings that change its pictures), which loads the model, but pictures found in the cache are not
    drawn again.
    """
    state: dict = {}

    def base() -> "BaseModel":
        if "base" not in state:
            state["base"] = load_base()
        return state["base"]

    def template():
        from ..sample.config import SampleConfig

        return SampleConfig(prompt="", steps=steps, cfg=cfg)

    def generate(prompt: str, n: int, seed: int) -> list:
        if "generate" not in state:
            from ..sample.sampler import make_generate

            state["generate"] = make_generate(base(), template(), reporter=reporter)
        return state["generate"](prompt, n, seed)

    def fingerprint() -> str:
        t = template()
        return f"{base().fingerprint}/{t.scheduler}/steps={t.steps}/cfg={t.cfg}"

    return generate, fingerprint
