"""What the erasure benchmark erases and how it tells whether a picture shows it: the targets (a shape, a
colour, a character; several erased in one run), their held-out prompt scenes, the oracle's verdict per
slot, and sampling with an erasure patch applied. The benchmark (`erasure.py`) and both robustness measures
(`robustness.py`, `recovery.py`) build on it; nothing here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from clif_core.errors import ClifError

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

TARGET_KINDS = ("shape", "colour", "character")
PROMPT_SEED_BASE = 3_500_000_000  # scenes no pretraining or oracle run rendered


@dataclass(frozen=True)
class Target:
    """What to erase: `kind` shape / colour / character, its `value`, and an optional alternative of the same kind."""

    kind: str
    value: str
    alternative: Optional[str] = None

    def label(self) -> str:
        return f"{self.kind} {self.value}" + (f" -> {self.alternative}" if self.alternative else "")

    def slug(self) -> str:
        return f"{self.kind}-{self.value}"


@dataclass(frozen=True)
class Erasure:
    """One erasure run: its targets, erased together and scored each on its own."""

    targets: tuple[Target, ...]

    def label(self) -> str:
        return " + ".join(t.label() for t in self.targets)

    def slug(self) -> str:
        return "+".join(t.slug() for t in self.targets)

    def row_label(self, target: Target) -> str:
        """How the tables name one target of this run."""
        return target.label() if len(self.targets) == 1 else f"{target.label()} [{len(self.targets)} in one run]"


def parse_targets(text: str, characters: Any) -> list[Erasure]:
    """'shape:circle->square,colour:red,character:ada,colour:red+shape:star': one erasure run per
    comma-separated item, its targets joined by '+' (an empty character: the spec's first paired one)."""
    from clif_core.sandbox.attributes import COLOUR_NAMES, SHAPES

    allowed = {"shape": SHAPES, "colour": COLOUR_NAMES, "character": tuple(characters.characters)}
    erasures = []
    for group in (g.strip() for g in text.split(",")):
        if not group:
            continue
        targets = [_parse_target(item.strip(), allowed, characters) for item in group.split("+")]
        if len({(t.kind, t.value) for t in targets}) < len(targets):
            raise ClifError(f"erase targets {group!r} name one target twice; each target of one run once")
        erasures.append(Erasure(tuple(targets)))
    if not erasures:
        raise ClifError("no erase targets given; e.g. --targets shape:circle->square,colour:red,character:ada")
    return erasures


def _parse_target(item: str, allowed: dict[str, Sequence[str]], characters: Any) -> Target:
    kind, colon, rest = item.partition(":")
    if not colon or kind not in TARGET_KINDS:
        raise ClifError(f"erase target {item!r}: write kind:value[->alternative] with kind one of "
                        f"{', '.join(TARGET_KINDS)}, e.g. shape:circle->square")
    value, _, alternative = (s.strip() for s in rest.partition("->"))
    if kind == "character" and not value:
        value = characters.pairs[0][0] if characters.pairs else next(iter(characters.characters))
    for v in (value, alternative):
        if v and v not in allowed[kind]:
            raise ClifError(f"erase target {item!r}: {v!r} is not a {kind} of {characters.source if kind == 'character' else 'the sandbox world'}; "
                            f"use one of {', '.join(allowed[kind])}")
    return Target(kind, value, alternative or None)


# ------------------------------------------------------------------------------------------------ scenes


def _character_values(thing: Any) -> dict[str, str]:
    from clif_core.sandbox.oracle_heads import thing_values

    return {k: v for k, v in thing_values(thing).items() if not k.startswith("detail")}


def shows(kind: str, value: str, thing: Any, characters: Any) -> bool:
    """Whether one slot's content shows the target: the shape; the colour on the object or any figure part;
    the character's parts (its uncaptioned detail ignored) with at most one attribute misread."""
    if thing is None:
        return False
    if kind == "shape":
        return thing.kind == "shape" and thing.shape == value
    if kind == "colour":
        if thing.kind == "shape":
            return thing.colour == value
        return any(p is not None and p.colour == value for p in (thing.head, thing.body, thing.accessory))
    want = _character_values(characters[value].figure)
    seen = _character_values(thing)
    return sum(want.get(k) != seen.get(k) for k in set(want) | set(seen)) <= 1


def prompt_text(kind: str, value: str, characters: Any) -> str:
    """The words that name the target in a prompt (a character by its caption)."""
    return characters[value].description if kind == "character" else value


def put_target(target: Target, thing: Any, characters: Any) -> Any:
    """`thing` changed to show the target: its shape (a figure stays), its colour (a figure's body), or the
    character in its place."""
    if target.kind == "shape":
        return replace(thing, shape=target.value) if thing.kind == "shape" else thing
    if target.kind == "colour":
        return replace(thing, colour=target.value) if thing.kind == "shape" else replace(
            thing, body=replace(thing.body, colour=target.value))
    return characters[target.value].figure


def target_scenes(target: Target, n: int, characters: Any) -> list[Any]:
    """`n` held-out scenes with the target put into the first object."""
    from clif_core.sandbox.prompt_following import PROMPT_SETS
    from clif_core.sandbox.scene import Placed, Scene
    from clif_core.sandbox.world import fit, scene_for_seed

    sets = ["one_object", "two_objects"] + (["figures"] if target.kind == "colour" else [])
    scenes = []
    for i in range(n):
        scene = scene_for_seed(PROMPT_SEED_BASE + i, PROMPT_SETS[sets[i % len(sets)]])
        first = scene.objects[0]
        thing = put_target(target, first.thing, characters)
        scenes.append(Scene(scene.background, (Placed(thing, fit(thing, first.placement)), *scene.objects[1:])))
    return scenes


def other_scenes(targets: Sequence[Target], n: int, characters: Any) -> list[Any]:
    """`n` held-out scenes of every kind in which none of `targets` appears."""
    from clif_core.sandbox.prompt_following import PROMPT_SETS
    from clif_core.sandbox.world import scene_for_seed

    sets = list(PROMPT_SETS.values())
    scenes, seed = [], PROMPT_SEED_BASE + 500_000
    while len(scenes) < n:
        scene = scene_for_seed(seed, sets[seed % len(sets)])
        seed += 1
        if not any(shows(t.kind, t.value, o.thing, characters) for o in scene.objects for t in targets):
            scenes.append(scene)
    return scenes


def produced(target: Target, value: Optional[str], images: np.ndarray, oracle: Any, characters: Any) -> list[float]:
    """Per image: 1 when the oracle sees `value` (of the target's kind) in some slot."""
    if value is None or not len(images):
        return []
    return [float(any(shows(target.kind, value, t, characters) for t in r.slots.values())) for r in oracle.read(images)]


def sample_images(base: BaseModel, prompts: list[str], steps: int, guidance: float, seed: int,
                  patch: Any = None) -> np.ndarray:
    """One image per prompt (image i from seed `seed + i`), `steps` DDIM steps at `guidance`, with a concept
    file or erasure patch applied."""
    from clif_core.concepts.apply import apply_concepts
    from clif_core.sandbox.prompt_following import generate

    if not prompts:
        return np.zeros((0, 64, 64, 3), dtype=np.uint8)
    applied = apply_concepts(base, [(patch, 1.0)]) if patch is not None else None
    try:
        texts = [applied.expand_prompt(p) for p in prompts] if applied is not None else prompts
        return generate(base, texts, seed=seed, steps=steps, guidance=guidance)
    finally:
        if applied is not None:
            applied.remove()
