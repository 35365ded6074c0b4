"""Rasterising a `Scene`: 64×64 RGB image, one mask per object, and per-part masks of figures.

Drawn at `supersample`× resolution and box-filtered down, so edges are anti-aliased the same way every time.
A label map records which object and part owns each supersampled pixel last, so masks describe what is
visible (a hat covers the head under it). Pure numpy + PIL; the same scene always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clif_core.sandbox.attributes import BACKGROUNDS, IMAGE_SIZE
from clif_core.sandbox.geometry import Layer, layers
from clif_core.sandbox.scene import Background, Scene, caption

PART_NAMES = ("object", "head", "body", "accessory")
PATTERN_SHADE = 0.45  # a texture's pattern is the part's colour darkened to this fraction
STRIPE_PERIOD, DOT_PERIOD, DOT_RADIUS, CHECK_SIZE = 8.0, 8.0, 2.1, 5.0  # pixels at 64×64


@dataclass(frozen=True)
class Render:
    """A rendered scene. `masks[i]` is object i's visible area; `part_masks[i]` maps part names of a figure
    ("head", "body", "accessory") to their visible areas ({} for a shape)."""

    scene: Scene
    image: np.ndarray  # uint8 [64, 64, 3]
    masks: np.ndarray  # bool [n_objects, 64, 64]
    part_masks: tuple[dict[str, np.ndarray], ...]

    @property
    def caption(self) -> str:
        return caption(self.scene)

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image, "RGB")


def _background(bg: Background, n: int) -> np.ndarray:
    c1 = np.array(BACKGROUNDS[bg.colour], dtype=np.float32)
    if bg.colour2 is None:
        return np.broadcast_to(c1, (n, n, 3)).copy()
    c2 = np.array(BACKGROUNDS[bg.colour2], dtype=np.float32)
    r = (np.arange(n, dtype=np.float32) + 0.5) / n
    if bg.direction == "vertical":
        t = np.broadcast_to(r[:, None], (n, n))
    elif bg.direction == "horizontal":
        t = np.broadcast_to(r[None, :], (n, n))
    else:
        t = (r[:, None] + r[None, :]) / 2
    return c1 + (c2 - c1) * t[..., None]


def _pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where a texture's darker pattern shows; u, v are pixel offsets from the part's centre, where a dot, a
    stripe edge and a check corner sit, so even a small part (a thin cross, a head) shows its pattern."""
    if texture == "plain":
        return np.zeros(u.shape, dtype=bool)
    if texture == "striped":
        return np.mod(u + v, STRIPE_PERIOD) < STRIPE_PERIOD / 2
    if texture == "dotted":
        du = np.mod(u + DOT_PERIOD / 2, DOT_PERIOD) - DOT_PERIOD / 2
        dv = np.mod(v + DOT_PERIOD / 2, DOT_PERIOD) - DOT_PERIOD / 2
        return du * du + dv * dv < DOT_RADIUS * DOT_RADIUS
    if texture == "checkered":
        return (np.floor(u / CHECK_SIZE) + np.floor(v / CHECK_SIZE)) % 2 == 1
    raise ValueError(f"unknown texture {texture!r}")


def _fill(layer: Layer, s: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The layer's supersampled coverage inside its bounding window, and that window."""
    n = IMAGE_SIZE * s
    pts = np.concatenate(layer.polygons) * s - 0.5  # PIL fills pixel (i, j) when its centre is inside
    x0, y0 = np.clip(np.floor(pts.min(axis=0)).astype(int), 0, n)
    x1, y1 = np.clip(np.ceil(pts.max(axis=0)).astype(int) + 1, 0, n)
    window = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), dtype=bool), window
    canvas = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in layer.polygons:
        draw.polygon([(float(x) * s - 0.5 - x0, float(y) * s - 0.5 - y0) for x, y in poly], fill=255)
    return np.asarray(canvas) > 0, window


def _box_sum(x: np.ndarray, s: int) -> np.ndarray:
    """Sum over each s×s block (strided slices: much faster than a multi-axis reduction)."""
    total = x[0::s, 0::s].astype(np.float32 if x.dtype != np.uint8 else np.int32)
    for i in range(s):
        for j in range(s):
            if i or j:
                total += x[i::s, j::s]
    return total


def render_scene(scene: Scene, supersample: int = 4) -> Render:
    s = int(supersample)
    n = IMAGE_SIZE * s
    canvas = _background(scene.background, n)
    owner = np.full((n, n), -1, dtype=np.int16)  # object index * len(PART_NAMES) + part index
    coords = (np.arange(n, dtype=np.float32) + 0.5) / s
    for index, placed in enumerate(scene.objects):
        p = placed.placement
        for layer in layers(placed.thing, p):
            region, (rows, cols) = _fill(layer, s)
            if not region.size:
                continue
            label = owner[rows, cols]
            if layer.clip_to is not None:
                region &= label == index * len(PART_NAMES) + PART_NAMES.index(layer.clip_to)
            colour = np.array(layer.colour, dtype=np.float32)
            points = np.concatenate(layer.polygons)
            cx, cy = (points.min(axis=0) + points.max(axis=0)) / 2
            u = coords[cols][None, :] - np.float32(cx)
            v = coords[rows][:, None] - np.float32(cy)
            u, v = np.broadcast_to(u, region.shape), np.broadcast_to(v, region.shape)
            dark = _pattern(layer.texture, u, v)
            pixels = canvas[rows, cols]
            pixels[region] = colour
            pixels[region & dark] = colour * PATTERN_SHADE
            label[region] = index * len(PART_NAMES) + PART_NAMES.index(layer.part)
    image = np.clip(np.rint(_box_sum(canvas, s) / (s * s)), 0, 255).astype(np.uint8)

    def coverage(selector: np.ndarray) -> np.ndarray:
        return _box_sum(selector.view(np.uint8), s) * 2 >= s * s

    masks, part_masks = [], []
    obj_of = np.where(owner >= 0, owner // len(PART_NAMES), -1)
    for index, placed in enumerate(scene.objects):
        masks.append(coverage(obj_of == index))
        parts = {}
        if placed.thing.kind == "figure":
            for part in ("head", "body", "accessory"):
                covered = coverage(owner == index * len(PART_NAMES) + PART_NAMES.index(part))
                if covered.any():
                    parts[part] = covered
        part_masks.append(parts)
    mask_array = np.stack(masks) if masks else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    return Render(scene=scene, image=image, masks=mask_array, part_masks=tuple(part_masks))
