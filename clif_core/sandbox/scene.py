"""What a sandbox image shows, as plain frozen dataclasses, and the caption that names it.

A `Scene` is the complete, exact description of one render: the renderer is a pure function of it, the
caption is derived from it, and the oracle's answers are checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from clif_core.sandbox.attributes import POSES


@dataclass(frozen=True)
class Part:
    """A figure part (head, body or accessory). For an accessory, `shape` is its kind ("hat", ...)."""

    shape: str
    colour: str
    texture: str = "plain"


@dataclass(frozen=True)
class Detail:
    """A figure's small identifying mark (badge, belt, eyes). Drawn, never named in captions."""

    kind: str
    colour: str


@dataclass(frozen=True)
class Shape:
    """A plain object: one of the world's shapes with a colour and a texture."""

    shape: str
    colour: str
    texture: str = "plain"

    kind = "shape"


@dataclass(frozen=True)
class Figure:
    """A figure built of parts: head, body and an optional accessory, plus an optional uncaptioned detail."""

    head: Part
    body: Part
    accessory: Optional[Part] = None
    detail: Optional[Detail] = None

    kind = "figure"


Thing = Union[Shape, Figure]


@dataclass(frozen=True)
class Placement:
    """Where and how an object is drawn, in 64×64 pixel units.

    `size` is a shape's outer diameter or a figure's height; `angle` a rotation in degrees (a figure leans
    about its centre); `pose` indexes `POSES` (arm position; figures only).
    """

    slot: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    pose: int = 0


@dataclass(frozen=True)
class Background:
    """A plain colour, or a linear gradient from `colour` to `colour2` along `direction`."""

    colour: str
    colour2: Optional[str] = None
    direction: Optional[str] = None


@dataclass(frozen=True)
class Placed:
    thing: Thing
    placement: Placement


@dataclass(frozen=True)
class Scene:
    background: Background
    objects: tuple[Placed, ...]


# ------------------------------------------------------------------------------------------------ captions


def _surface(colour: str, texture: str) -> str:
    """'an orange striped', 'a red' (the article agrees with the first word)."""
    words = colour if texture == "plain" else f"{colour} {texture}"
    return ("an " if words[0] in "aeiou" else "a ") + words


def describe_part(part: Part, name: str) -> str:
    """'a green round head', 'a blue dotted boxy body', 'a yellow hat'."""
    if name == "accessory":
        return f"{_surface(part.colour, part.texture)} {part.shape}"
    return f"{_surface(part.colour, part.texture)} {part.shape} {name}"


def describe(thing: Thing) -> str:
    """A noun phrase naming what is drawn; a figure's detail and pose are left out on purpose."""
    if isinstance(thing, Shape):
        return f"{_surface(thing.colour, thing.texture)} {thing.shape}"
    phrases = [describe_part(thing.head, "head"), describe_part(thing.body, "body")]
    if thing.accessory is not None:
        phrases.append(describe_part(thing.accessory, "accessory"))
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a figure with {listed}"


def describe_background(background: Background) -> str:
    if background.colour2 is None:
        return f"{background.colour} background"
    return f"{background.colour} and {background.colour2} gradient background"


def caption(scene: Scene, background: bool = True) -> str:
    """'a red striped circle on the left and a figure with ... on the right, pale blue background'."""
    objs = scene.objects
    if len(objs) == 1:
        text = describe(objs[0].thing)
    else:
        text = " and ".join(f"{describe(o.thing)} on the {o.placement.slot}" for o in objs)
    if background:
        text += ", " + describe_background(scene.background)
    return text


def pose_name(placement: Placement) -> str:
    return POSES[placement.pose]
