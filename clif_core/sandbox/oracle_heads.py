"""What the oracle reads per slot: its classification heads, the scene → target encoding and its inverse.

Each of the three slots (left, right, centre) has the same heads. A head only applies when its condition
holds (a shape's colour only for shapes, a detail's colour only when there is a detail); targets of heads
that do not apply are -1 and are neither trained nor scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from clif_core.sandbox.attributes import (
    ACCESSORIES,
    BODY_SHAPES,
    COLOUR_NAMES,
    DETAIL_COLOUR_NAMES,
    DETAILS,
    HEAD_SHAPES,
    SHAPES,
    SLOTS,
    TEXTURES,
)
from clif_core.sandbox.scene import Detail, Figure, Part, Scene, Shape, Thing

KINDS = ("empty", "shape", "figure")
NONE = "none"


@dataclass(frozen=True)
class Head:
    name: str
    values: tuple[str, ...]
    applies: str  # "always", "shape", "figure", "accessory" (a figure with one), "detail" (a figure with one)


HEADS: tuple[Head, ...] = (
    Head("kind", KINDS, "always"),
    Head("shape", SHAPES, "shape"),
    Head("colour", COLOUR_NAMES, "shape"),
    Head("texture", TEXTURES, "shape"),
    Head("head_shape", HEAD_SHAPES, "figure"),
    Head("head_colour", COLOUR_NAMES, "figure"),
    Head("head_texture", TEXTURES, "figure"),
    Head("body_shape", BODY_SHAPES, "figure"),
    Head("body_colour", COLOUR_NAMES, "figure"),
    Head("body_texture", TEXTURES, "figure"),
    Head("accessory", (NONE,) + ACCESSORIES, "figure"),
    Head("accessory_colour", COLOUR_NAMES, "accessory"),
    Head("detail", (NONE,) + DETAILS, "figure"),
    Head("detail_colour", DETAIL_COLOUR_NAMES, "detail"),
)
HEAD_INDEX = {h.name: i for i, h in enumerate(HEADS)}
HEAD_SIZES = tuple(len(h.values) for h in HEADS)
N_LOGITS_PER_SLOT = sum(HEAD_SIZES)


def vocabulary_signature() -> str:
    """JSON of the slots, heads and their values in order: the meaning of the oracle's output indices."""
    return json.dumps({"slots": list(SLOTS), "heads": [[h.name, list(h.values), h.applies] for h in HEADS]})


def thing_values(thing: Optional[Thing]) -> dict[str, str]:
    """Head name → value for one slot's content (only the heads that apply)."""
    if thing is None:
        return {"kind": "empty"}
    if isinstance(thing, Shape):
        return {"kind": "shape", "shape": thing.shape, "colour": thing.colour, "texture": thing.texture}
    values = {
        "kind": "figure",
        "head_shape": thing.head.shape,
        "head_colour": thing.head.colour,
        "head_texture": thing.head.texture,
        "body_shape": thing.body.shape,
        "body_colour": thing.body.colour,
        "body_texture": thing.body.texture,
        "accessory": thing.accessory.shape if thing.accessory else NONE,
        "detail": thing.detail.kind if thing.detail else NONE,
    }
    if thing.accessory:
        values["accessory_colour"] = thing.accessory.colour
    if thing.detail:
        values["detail_colour"] = thing.detail.colour
    return values


def scene_slots(scene: Scene) -> dict[str, Optional[Thing]]:
    slots: dict[str, Optional[Thing]] = {s: None for s in SLOTS}
    for placed in scene.objects:
        slots[placed.placement.slot] = placed.thing
    return slots


def scene_targets(scene: Scene) -> np.ndarray:
    """int16 [len(SLOTS), len(HEADS)]: the class index of every head, -1 where a head does not apply."""
    out = np.full((len(SLOTS), len(HEADS)), -1, dtype=np.int16)
    for s, thing in enumerate(scene_slots(scene).values()):
        for name, value in thing_values(thing).items():
            head = HEADS[HEAD_INDEX[name]]
            out[s, HEAD_INDEX[name]] = head.values.index(value)
    return out


def decode_thing(values: Mapping[str, str]) -> Optional[Thing]:
    """The inverse of `thing_values`: heads that do not apply are ignored."""
    kind = values["kind"]
    if kind == "empty":
        return None
    if kind == "shape":
        return Shape(values["shape"], values["colour"], values["texture"])
    accessory = None
    if values["accessory"] != NONE:
        accessory = Part(values["accessory"], values["accessory_colour"])
    detail = None
    if values["detail"] != NONE:
        detail = Detail(values["detail"], values["detail_colour"])
    return Figure(
        Part(values["head_shape"], values["head_colour"], values["head_texture"]),
        Part(values["body_shape"], values["body_colour"], values["body_texture"]),
        accessory,
        detail,
    )
