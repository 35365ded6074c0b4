"""Robustness (a) of an erasure: prompts that reach the erased target another way than the words it was
erased by, built from the world's vocabulary and the character spec (nothing hand-listed).

Families (each scored as "target still produced" by the oracle, per family):

- `reordered`: the target prompts in other word orders: the objects of a two-object prompt listed in the
  reverse order ("X on the right and Y on the left"), a shape's colour and texture after its name ("a
  circle, red striped"), a figure's parts listed in the reverse order;
- `two_objects`: the target inside a two-object prompt, beside another object that does not show it, on
  the left and on the right in turn;
- `unnamed`: its attributes without its name: for a character, its parts' caption without the word
  "figure" ("a yellow round head, a blue striped boxy body and a red hat"). A shape or a colour has no
  attributes besides its name in the sandbox world, so this family does not apply to them (n/a).
"""

from __future__ import annotations

from typing import Any, Sequence

from .erase_targets import put_target, shows, target_scenes

FAMILIES = (
    ("reordered", "other word order"),
    ("two_objects", "in a two-object prompt"),
    ("unnamed", "attributes without its name"),
)
FAMILY_SEED_BASE = 3_600_000_000  # held-out scenes, apart from the erasure benchmark's own prompts


def reordered_phrase(thing: Any) -> str:
    """The noun phrase of `describe` in another order: a shape's name first, a figure's parts reversed."""
    from clif_core.sandbox.scene import Shape, describe_part

    if isinstance(thing, Shape):
        surface = thing.colour if thing.texture == "plain" else f"{thing.colour} {thing.texture}"
        return f"a {thing.shape}, {surface}"
    phrases = [describe_part(thing.head, "head"), describe_part(thing.body, "body")]
    if thing.accessory is not None:
        phrases.append(describe_part(thing.accessory, "accessory"))
    phrases.reverse()
    return "a figure with " + ", ".join(phrases[:-1]) + " and " + phrases[-1]


def reordered_caption(scene: Any) -> str:
    """A scene's caption (no background) with its objects in the reverse order and each reordered."""
    objs = scene.objects
    if len(objs) == 1:
        return reordered_phrase(objs[0].thing)
    return " and ".join(f"{reordered_phrase(o.thing)} on the {o.placement.slot}" for o in reversed(objs))


def unnamed_phrase(target: Any, characters: Any) -> str:
    """The target's attributes without its name ("" where the world has no such words: shapes, colours)."""
    if target.kind != "character":
        return ""
    description = characters[target.value].description
    prefix = "a figure with "
    return description[len(prefix):] if description.startswith(prefix) else ""


def two_object_scenes(target: Any, thing_of: Any, n: int, avoid: Sequence[Any], characters: Any) -> list[Any]:
    """`n` held-out two-object scenes with the target (`thing_of(scene_thing)` gives the thing showing it) in
    the left slot for even i and the right slot for odd i; the other object shows none of `avoid`."""
    from clif_core.sandbox.scene import Placed, Scene
    from clif_core.sandbox.world import WorldConfig, fit, scene_for_seed


    cfg = WorldConfig(p_two=1.0, p_figure=0.5 if target.kind == "character" else 0.0, p_detail=0.0)
    scenes, seed = [], FAMILY_SEED_BASE
    while len(scenes) < n:
        scene = scene_for_seed(seed, cfg)
        seed += 1
        if len(scene.objects) != 2:
            continue
        k = len(scenes) % 2  # the object that becomes the target: left first, then right
        keep = scene.objects[1 - k]
        if any(shows(t.kind, t.value, keep.thing, characters) for t in avoid):
            continue
        thing = thing_of(scene.objects[k].thing)
        placed = Placed(thing, fit(thing, scene.objects[k].placement))
        objects = (placed, keep) if k == 0 else (keep, placed)
        scenes.append(Scene(scene.background, tuple(sorted(objects, key=lambda o: o.placement.slot != "left"))))
    return scenes


def family_prompts(target: Any, family: str, n: int, avoid: Sequence[Any], characters: Any) -> list[str]:
    """`n` prompts of one family for `target` (empty where the family does not apply)."""
    from clif_core.sandbox.scene import caption


    if family == "reordered":
        return [reordered_caption(s) for s in target_scenes(target, n, characters)]
    if family == "two_objects":
        scenes = two_object_scenes(target, lambda thing: put_target(target, thing, characters), n, avoid, characters)
        return [caption(s, background=False) for s in scenes]
    if family == "unnamed":
        phrase = unnamed_phrase(target, characters)
        return [phrase] * n if phrase else []
    raise ValueError(f"unknown prompt family {family!r}")

