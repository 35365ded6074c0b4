"""Outlines of every shape and figure part as polygons in pixel coordinates.

Shapes are drawn in a unit frame (centre 0, outer radius 1); figures in a frame of their own height
(centre 0, y down, from -0.5 at the top of a hat to +0.5 at the feet). A placement scales, rotates and moves
the frame into the image. Everything is polygons, so any shape rotates and the renderer needs one primitive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clif_core.sandbox.attributes import COLOURS, DETAIL_COLOURS
from clif_core.sandbox.scene import Figure, Placement, Shape, Thing


@dataclass(frozen=True)
class Layer:
    """One filled region: which part it belongs to, its outline(s), colour and texture.

    `clip_to` limits the region to what an earlier layer of that part covers (a belt stays on the body).
    """

    part: str
    polygons: tuple[np.ndarray, ...]
    colour: tuple[int, int, int]
    texture: str = "plain"
    clip_to: Optional[str] = None


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(2 * points)
    outer[1::2] *= inner
    return outer


def _heart(n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1)
    return pts / np.abs(pts).max()


def _box(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


_CROSS = np.array(
    [[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3], [0.3, 1], [-0.3, 1], [-0.3, 0.3],
     [-1, 0.3], [-1, -0.3], [-0.3, -0.3]],
    dtype=np.float64,
)

SHAPE_OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular(48),
    "square": _box(-0.78, -0.78, 0.78, 0.78),
    "triangle": _regular(3, 1.0) * np.array([1.0, 1.0]) + np.array([0.0, 0.2]),
    "diamond": _regular(4, 1.0) * np.array([0.8, 1.0]),
    "star": _star(),
    "hexagon": _regular(6, 1.0, 0.0),
    "heart": _heart(),
    "cross": _CROSS * 0.9,
}

# Figure frame: height 1, centre 0, y down.
_HEAD_CENTRE = (0.0, -0.16)
_HEAD_OUTLINES: dict[str, np.ndarray] = {
    "round": _regular(40, 0.155),
    "square": _box(-0.14, -0.14, 0.14, 0.14),
    "pointy": np.array([[0.0, -0.2], [0.165, 0.13], [-0.165, 0.13]]),
}
_BODY_OUTLINES: dict[str, np.ndarray] = {
    "boxy": _box(-0.18, 0.0, 0.18, 0.5),
    "round": _regular(40, 1.0) * np.array([0.21, 0.25]) + np.array([0.0, 0.25]),
    "flared": np.array([[-0.1, 0.0], [0.1, 0.0], [0.25, 0.5], [-0.25, 0.5]]),
}
_ACCESSORY_OUTLINES: dict[str, tuple[np.ndarray, ...]] = {
    "hat": (_box(-0.11, -0.48, 0.11, -0.31), _box(-0.19, -0.335, 0.19, -0.29)),
    "crown": (np.array([[-0.14, -0.29], [-0.14, -0.45], [-0.07, -0.37], [0.0, -0.48], [0.07, -0.37], [0.14, -0.45],
                        [0.14, -0.29]]),),
    "bowtie": (np.array([[0.0, 0.04], [-0.13, -0.02], [-0.13, 0.11]]), np.array([[0.0, 0.04], [0.13, -0.02], [0.13, 0.11]])),
}
_DETAIL_OUTLINES: dict[str, tuple[str, tuple[np.ndarray, ...]]] = {
    # detail kind -> (part it sits on, outlines)
    "badge": ("body", (_box(-0.065, 0.12, 0.065, 0.25),)),
    "belt": ("body", (_box(-0.4, 0.3, 0.4, 0.37),)),
    "eyes": ("head", (_regular(16, 0.045) + np.array([-0.065, -0.17]), _regular(16, 0.045) + np.array([0.065, -0.17]))),
}
_SHOULDER = (0.16, 0.07)
_ARM_ANGLES = (-60.0, -5.0, 50.0)  # degrees above horizontal, per pose index
_ARM_LENGTH, _ARM_WIDTH = 0.2, 0.06



def _arm(side: int, pose: int) -> np.ndarray:
    angle = math.radians(_ARM_ANGLES[pose])
    sx, sy = side * _SHOULDER[0], _SHOULDER[1]
    dx, dy = side * math.cos(angle) * _ARM_LENGTH, -math.sin(angle) * _ARM_LENGTH
    nx, ny = -dy / _ARM_LENGTH * _ARM_WIDTH / 2, dx / _ARM_LENGTH * _ARM_WIDTH / 2
    return np.array([[sx + nx, sy + ny], [sx + dx + nx, sy + dy + ny], [sx + dx - nx, sy + dy - ny], [sx - nx, sy - ny]])


def _frame_layers(thing: Thing, pose: int) -> list[Layer]:
    """Layers in the object's own frame, in drawing order."""
    if isinstance(thing, Shape):
        return [Layer("object", (SHAPE_OUTLINES[thing.shape] * 0.5,), COLOURS[thing.colour], thing.texture)]
    assert isinstance(thing, Figure)
    body_colour = COLOURS[thing.body.colour]
    layers = [
        Layer("body", (_arm(-1, pose), _arm(1, pose)), body_colour),
        Layer("body", (_BODY_OUTLINES[thing.body.shape],), body_colour, thing.body.texture),
        Layer("head", (_HEAD_OUTLINES[thing.head.shape] + np.array(_HEAD_CENTRE),), COLOURS[thing.head.colour],
              thing.head.texture),
    ]
    if thing.detail is not None:
        part, outlines = _DETAIL_OUTLINES[thing.detail.kind]
        layers.append(Layer(part, outlines, DETAIL_COLOURS[thing.detail.colour], clip_to=part))
    if thing.accessory is not None:
        layers.append(Layer("accessory", _ACCESSORY_OUTLINES[thing.accessory.shape], COLOURS[thing.accessory.colour],
                            thing.accessory.texture))
    return layers


def place(points: np.ndarray, placement: Placement) -> np.ndarray:
    """Frame coordinates → image pixel coordinates (scale by size, rotate by angle, move to the centre)."""
    a = math.radians(placement.angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    return points @ rot * placement.size + np.array([placement.cx, placement.cy])


def layers(thing: Thing, placement: Placement) -> list[Layer]:
    """The object's layers in image pixel coordinates, in drawing order."""
    out = []
    for layer in _frame_layers(thing, placement.pose):
        polys = tuple(place(p, placement) for p in layer.polygons)
        out.append(Layer(layer.part, polys, layer.colour, layer.texture, layer.clip_to))
    return out


def extent(thing: Thing, placement: Placement) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) in pixels of everything that can be drawn (clipped layers excluded)."""
    pts = np.concatenate([p for layer in layers(thing, placement) if layer.clip_to is None for p in layer.polygons])
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())
