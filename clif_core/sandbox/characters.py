"""Benchmark characters: figures with a fixed part combination and an identifying detail captions never name.

Characters live in a JSON spec file so new ones need no code (the shipped set is `characters.json` here)::

    {
      "format": "clif-sandbox-characters", "version": 1,
      "characters": {
        "ada": {"head": {"shape": "round", "colour": "yellow"},
                "body": {"shape": "boxy", "colour": "blue", "texture": "striped"},
                "accessory": {"kind": "hat", "colour": "red"},
                "detail": {"kind": "badge", "colour": "white"}},
        ...
      },
      "pairs": [["ada", "ida"], ...]
    }

`texture` defaults to "plain"; `accessory` and `detail` may be null or left out; `class_word` (default
"figure") may be given per character. `pairs` lists confusable pairs (a shared body plan, different part
colours or details) for the benchmarks. Every value must be one of the world's (see `attributes.py`); a bad
file raises `ClifError` naming the file, the field and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from clif_core.errors import ClifError
from clif_core.sandbox.attributes import (
    ACCESSORIES,
    BODY_SHAPES,
    COLOUR_NAMES,
    DETAIL_COLOUR_NAMES,
    DETAILS,
    HEAD_SHAPES,
    POSES,
    TEXTURES,
)
from clif_core.sandbox.render import Render, render_scene
from clif_core.sandbox.scene import (
    Background,
    Detail,
    Figure,
    Part,
    Placed,
    Scene,
    Thing,
    describe,
)
from clif_core.sandbox.world import WorldConfig, compose, fit
from clif_core.validation import check_plain_name

SPEC_FORMAT = "clif-sandbox-characters"
SPEC_VERSION = 1
SHIPPED_SPEC = Path(__file__).parent / "characters.json"
FIGURE_PARTS = ("head", "body", "accessory")


@dataclass(frozen=True)
class Character:
    name: str
    figure: Figure
    class_word: str = "figure"

    @property
    def description(self) -> str:
        """What a caption says about the character: its parts, never its detail."""
        return describe(self.figure)

    def body_plan(self) -> tuple[str, str, Optional[str]]:
        acc = self.figure.accessory
        return self.figure.head.shape, self.figure.body.shape, acc.shape if acc else None


@dataclass(frozen=True)
class CharacterSet:
    characters: dict[str, Character]
    pairs: tuple[tuple[str, str], ...]
    source: str

    def __getitem__(self, name: str) -> Character:
        try:
            return self.characters[name]
        except KeyError:
            raise ClifError(
                f"{self.source}: no character named {name!r}; the file defines {', '.join(self.characters)}"
            ) from None

    def match(self, figure: Optional[Thing]) -> Optional[str]:
        """The name of the character whose every part and detail equals `figure`'s, or None."""
        for name, character in self.characters.items():
            if character.figure == figure:
                return name
        return None

    def closest(self, figure: Optional[Thing], max_mismatch: int = 1) -> Optional[str]:
        """The character that differs from `figure` in the fewest attributes (the oracle's heads: part
        shapes, colours, textures, accessory, detail), if that is at most `max_mismatch` and no other
        character is as close; else None. Tolerates one misread attribute where `match` needs all nine."""
        from clif_core.sandbox.oracle_heads import thing_values

        seen = thing_values(figure)
        scored = sorted(
            (sum(want.get(k) != seen.get(k) for k in set(want) | set(seen)), name)
            for name, want in ((n, thing_values(c.figure)) for n, c in self.characters.items())
        )
        best, name = scored[0]
        if best > max_mismatch or (len(scored) > 1 and scored[1][0] == best):
            return None
        return name


# ------------------------------------------------------------------------------------------------ loading


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str) -> ClifError:
        return ClifError(f"{self.source}: {field}: {problem}")

    def obj(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a JSON object, not {type(value).__name__}")
        return value

    def choice(self, obj: dict, key: str, field: str, allowed: Sequence[str], default: Optional[str] = None) -> str:
        value = obj.get(key, default)
        if value is None:
            raise self.fail(f"{field}.{key}", f"is missing; give one of {', '.join(allowed)}")
        if value not in allowed:
            raise self.fail(f"{field}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
        return str(value)

    def known_keys(self, obj: dict, field: str, keys: Sequence[str]) -> None:
        extra = sorted(set(obj) - set(keys))
        if extra:
            raise self.fail(field, f"unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(keys)}")

    def part(self, value: Any, field: str, shapes: Sequence[str], shape_key: str = "shape") -> Part:
        obj = self.obj(value, field)
        self.known_keys(obj, field, (shape_key, "colour", "texture"))
        return Part(
            self.choice(obj, shape_key, field, shapes),
            self.choice(obj, "colour", field, COLOUR_NAMES),
            self.choice(obj, "texture", field, TEXTURES, default="plain"),
        )

    def character(self, name: str, value: Any) -> Character:
        field = f"characters.{name}"
        obj = self.obj(value, field)
        self.known_keys(obj, field, ("head", "body", "accessory", "detail", "class_word"))
        for required in ("head", "body"):
            if required not in obj:
                raise self.fail(f"{field}.{required}", "is missing; every character has a head and a body")
        accessory = None
        if obj.get("accessory") is not None:
            accessory = self.part(obj["accessory"], f"{field}.accessory", ACCESSORIES, shape_key="kind")
            if accessory.texture != "plain":
                raise self.fail(f"{field}.accessory.texture", "accessories are always plain; leave texture out")
        detail = None
        if obj.get("detail") is not None:
            d = self.obj(obj["detail"], f"{field}.detail")
            self.known_keys(d, f"{field}.detail", ("kind", "colour"))
            detail = Detail(self.choice(d, "kind", f"{field}.detail", DETAILS),
                            self.choice(d, "colour", f"{field}.detail", DETAIL_COLOUR_NAMES))
        class_word = obj.get("class_word", "figure")
        if not isinstance(class_word, str) or not class_word.strip():
            raise self.fail(f"{field}.class_word", "must be a non-empty string such as 'figure'")
        figure = Figure(
            self.part(obj["head"], f"{field}.head", HEAD_SHAPES),
            self.part(obj["body"], f"{field}.body", BODY_SHAPES),
            accessory,
            detail,
        )
        return Character(name, figure, class_word.strip())


def parse_characters(data: Any, source: str = "<characters>") -> CharacterSet:
    """Check a decoded character spec and build the `CharacterSet` (errors name `source` and the field)."""
    r = _Reader(source)
    top = r.obj(data, "the file")
    if top.get("format") != SPEC_FORMAT:
        raise r.fail("format", f"is {top.get('format')!r}; a character spec has \"format\": \"{SPEC_FORMAT}\"")
    if top.get("version") != SPEC_VERSION:
        raise r.fail("version", f"is {top.get('version')!r}; this version of the pack reads version {SPEC_VERSION}")
    r.known_keys(top, "the file", ("format", "version", "characters", "pairs", "comment"))
    chars = r.obj(top.get("characters"), "characters")
    if not chars:
        raise r.fail("characters", "is empty; define at least one character")
    characters = {}
    for name, value in chars.items():
        if not name or any(c.isspace() for c in name):
            raise r.fail(f"characters.{name!r}", "a character name is one word without spaces")
        check_plain_name(name, f"{source}: the character name in characters")  # it names a folder under --out
        characters[name] = r.character(name, value)
    figures: dict[Figure, str] = {}
    for name, c in characters.items():
        if c.figure in figures:
            raise r.fail(f"characters.{name}", f"is identical to {figures[c.figure]!r}; characters must differ")
        figures[c.figure] = name
    pairs_raw = top.get("pairs", [])
    if not isinstance(pairs_raw, list):
        raise r.fail("pairs", "must be a list of [name, name] pairs")
    pairs = []
    for i, pair in enumerate(pairs_raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise r.fail(f"pairs[{i}]", f"{pair!r} is not a [name, name] pair")
        for p in pair:
            if p not in characters:
                raise r.fail(f"pairs[{i}]", f"{p!r} is not a character defined in this file")
        if pair[0] == pair[1]:
            raise r.fail(f"pairs[{i}]", f"pairs {pair[0]!r} with itself; a pair names two different characters")
        pairs.append((pair[0], pair[1]))
    return CharacterSet(characters, tuple(pairs), source)


def load_characters(path: Union[str, Path, None] = None) -> CharacterSet:
    """Read a character spec file (the shipped `characters.json` when `path` is None)."""
    path = Path(path) if path is not None else SHIPPED_SPEC
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ClifError(f"{path}: cannot read the character spec ({err.strerror or err}); check the path") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as err:
        raise ClifError(f"{path}: not valid JSON ({err}); fix the file (see docs/sandbox.md for the format)") from None
    return parse_characters(data, str(path))


# ---------------------------------------------------------------------------------------------- rendering


def character_scene(
    character: Character,
    rng: np.random.Generator,
    cfg: WorldConfig = WorldConfig(),
    background: Optional[Background] = None,
) -> Scene:
    """The character alone in the centre, with sampled pose, lean, scale, position and background."""
    return compose(rng, [character.figure], cfg, background)


def render_character_images(character: Character, n: int, seed: int = 0, cfg: WorldConfig = WorldConfig()) -> list[Render]:
    """`n` training pictures of one character (the concept pipeline's "few pictures per concept")."""
    if n < 1:
        raise ClifError(f"number of pictures must be at least 1, not {n}")
    rng = np.random.default_rng([seed, _name_seed(character.name)])
    poses = [int(p) for _ in range(0, n, len(POSES)) for p in rng.permutation(len(POSES))]  # every pose shows
    renders = []
    for i in range(n):
        scene = character_scene(character, rng, cfg)
        placed = scene.objects[0]
        posed = Placed(placed.thing, fit(placed.thing, replace(placed.placement, pose=poses[i])))
        renders.append(render_scene(Scene(scene.background, (posed,))))
    return renders


def _name_seed(name: str) -> int:
    """A stable per-name number (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def character_concept(character: Character, token: str, n: int = 5, seed: int = 0):
    """A `clif_core.concepts.Concept` of `n` renders with exact whole and part masks."""
    from clif_core.concepts.spec import Concept

    renders = render_character_images(character, n, seed)
    parts = [p for p in FIGURE_PARTS if any(p in r.part_masks[0] for r in renders)]
    return Concept(
        name=character.name,
        token=token,
        class_word=character.class_word,
        images=[r.pil() for r in renders],
        masks=[r.masks[0] for r in renders],
        parts=parts,
        part_masks=[dict(r.part_masks[0]) for r in renders],
        sources=[f"sandbox character {character.name} render {i} (seed {seed})" for i in range(n)],
    )


def write_character_folder(character: Character, out_dir: Union[str, Path], n: int = 5, seed: int = 0) -> Path:
    """Write `n` renders as a concept folder `load_concept_folder` reads: `NNN.png` plus `masks/NNN.png` (whole)
    and `masks/NNN.<part>.png` (head, body, accessory). Files are written atomically."""
    from PIL import Image

    from clif_core.fileio import atomic_path

    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    def save(img: Image.Image, path: Path) -> None:
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")

    for i, r in enumerate(render_character_images(character, n, seed)):
        stem = f"{i:03d}"
        save(r.pil(), out / f"{stem}.png")
        save(Image.fromarray(r.masks[0].astype(np.uint8) * 255, "L"), out / "masks" / f"{stem}.png")
        for part, mask in r.part_masks[0].items():
            save(Image.fromarray(mask.astype(np.uint8) * 255, "L"), out / "masks" / f"{stem}.{part}.png")
    return out
