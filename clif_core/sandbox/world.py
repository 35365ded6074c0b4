"""The sandbox world: random scenes from a seed, rendered with captions and masks.

    >>> r = render(7)
    >>> r.caption, r.image.shape, r.masks.shape
    ('a ...', (64, 64, 3), (n, 64, 64))

One or two objects (centre, or left and right), each a shape or a figure, on a plain or gradient background.
Everything is drawn from `numpy.random.default_rng(seed)`, so a seed and a `WorldConfig` fix the image bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Optional, Sequence

import numpy as np

from clif_core.sandbox.attributes import (
    ACCESSORIES,
    BACKGROUND_NAMES,
    BODY_SHAPES,
    COLOUR_NAMES,
    DETAIL_COLOUR_NAMES,
    DETAILS,
    GRADIENT_DIRECTIONS,
    HEAD_SHAPES,
    IMAGE_SIZE,
    POSES,
    SHAPES,
    TEXTURES,
)
from clif_core.sandbox.geometry import extent
from clif_core.sandbox.render import Render, render_scene
from clif_core.sandbox.scene import (
    Background,
    Detail,
    Figure,
    Part,
    Placed,
    Placement,
    Scene,
    Shape,
    Thing,
)

MARGIN = 1.0  # pixels kept free at the image border and on each side of the middle line
SLOT_X = {"left": IMAGE_SIZE * 0.25, "right": IMAGE_SIZE * 0.75, "center": IMAGE_SIZE * 0.5}


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn. Probabilities are per scene or per object; sizes in pixels (see `Placement`)."""

    p_two: float = 0.6
    p_figure: float = 0.4
    p_gradient: float = 0.35
    p_accessory: float = 0.6
    p_detail: float = 0.5
    p_plain_texture: float = 0.4  # the rest is spread evenly over the other textures
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOUR_NAMES
    textures: tuple[str, ...] = TEXTURES
    backgrounds: tuple[str, ...] = BACKGROUND_NAMES
    shape_size_one: tuple[float, float] = (26.0, 42.0)
    shape_size_two: tuple[float, float] = (18.0, 28.0)
    figure_height_one: tuple[float, float] = (38.0, 56.0)
    figure_height_two: tuple[float, float] = (32.0, 46.0)
    jitter_one: float = 6.0
    jitter_two: float = 3.0
    max_shape_angle: float = 12.0
    max_lean: float = 12.0


# --------------------------------------------------------------------------------------------- sampling


def _texture(rng: np.random.Generator, cfg: WorldConfig) -> str:
    others = [t for t in cfg.textures if t != "plain"]
    if "plain" in cfg.textures and (not others or rng.random() < cfg.p_plain_texture):
        return "plain"
    return str(rng.choice(others))


def sample_background(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> Background:
    first = str(rng.choice(cfg.backgrounds))
    if rng.random() >= cfg.p_gradient or len(cfg.backgrounds) < 2:
        return Background(first)
    second = str(rng.choice([b for b in cfg.backgrounds if b != first]))
    return Background(first, second, str(rng.choice(GRADIENT_DIRECTIONS)))


def sample_figure(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> Figure:
    head = Part(str(rng.choice(HEAD_SHAPES)), str(rng.choice(cfg.colours)), _texture(rng, cfg))
    body = Part(str(rng.choice(BODY_SHAPES)), str(rng.choice(cfg.colours)), _texture(rng, cfg))
    accessory = None
    if rng.random() < cfg.p_accessory:
        accessory = Part(str(rng.choice(ACCESSORIES)), str(rng.choice(cfg.colours)))
    detail = None
    if rng.random() < cfg.p_detail:
        detail = Detail(str(rng.choice(DETAILS)), str(rng.choice(DETAIL_COLOUR_NAMES)))
    return Figure(head, body, accessory, detail)


def sample_thing(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> Thing:
    if rng.random() < cfg.p_figure:
        return sample_figure(rng, cfg)
    return Shape(str(rng.choice(cfg.shapes)), str(rng.choice(cfg.colours)), _texture(rng, cfg))


def slot_box(slot: str) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1) an object in `slot` must stay inside; left and right never touch."""
    mid = IMAGE_SIZE / 2
    x0 = {"left": MARGIN, "right": mid + MARGIN, "center": MARGIN}[slot]
    x1 = {"left": mid - MARGIN, "right": IMAGE_SIZE - MARGIN, "center": IMAGE_SIZE - MARGIN}[slot]
    return x0, MARGIN, x1, IMAGE_SIZE - MARGIN


def fit(thing: Thing, placement: Placement) -> Placement:
    """Shrink and move a placement so everything drawn stays inside its slot's box."""
    bx0, by0, bx1, by1 = slot_box(placement.slot)
    x0, y0, x1, y1 = extent(thing, placement)
    scale = min(1.0, (bx1 - bx0) / (x1 - x0), (by1 - by0) / (y1 - y0))
    if scale < 1.0:
        placement = replace(placement, size=placement.size * scale * 0.999)
        x0, y0, x1, y1 = extent(thing, placement)
    dx = max(0.0, bx0 - x0) - max(0.0, x1 - bx1)
    dy = max(0.0, by0 - y0) - max(0.0, y1 - by1)
    return replace(placement, cx=placement.cx + dx, cy=placement.cy + dy)


def sample_placement(rng: np.random.Generator, thing: Thing, slot: str, cfg: WorldConfig = WorldConfig()) -> Placement:
    one = slot == "center"
    jitter = cfg.jitter_one if one else cfg.jitter_two
    if thing.kind == "figure":
        size = rng.uniform(*(cfg.figure_height_one if one else cfg.figure_height_two))
        angle = rng.uniform(-cfg.max_lean, cfg.max_lean)
        pose = int(rng.integers(len(POSES)))
    else:
        size = rng.uniform(*(cfg.shape_size_one if one else cfg.shape_size_two))
        angle = rng.uniform(-cfg.max_shape_angle, cfg.max_shape_angle)
        pose = 0
    cx = SLOT_X[slot] + rng.uniform(-jitter, jitter)
    cy = IMAGE_SIZE / 2 + rng.uniform(-jitter, jitter)
    return fit(thing, Placement(slot, float(cx), float(cy), float(size), float(angle), pose))


def compose(
    rng: np.random.Generator,
    things: Sequence[Thing],
    cfg: WorldConfig = WorldConfig(),
    background: Optional[Background] = None,
) -> Scene:
    """A scene of the given one or two things (centre, or left then right) with sampled placements."""
    if len(things) not in (1, 2):
        raise ValueError(f"a sandbox scene holds one or two objects, not {len(things)}")
    slots = ("center",) if len(things) == 1 else ("left", "right")
    bg = background if background is not None else sample_background(rng, cfg)
    placed = tuple(Placed(t, sample_placement(rng, t, slot, cfg)) for t, slot in zip(things, slots))
    return Scene(bg, placed)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig = WorldConfig()) -> Scene:
    n = 2 if rng.random() < cfg.p_two else 1
    bg = sample_background(rng, cfg)
    things = [sample_thing(rng, cfg) for _ in range(n)]
    return compose(rng, things, cfg, bg)


# ---------------------------------------------------------------------------------------------- renders


def scene_for_seed(seed: int, cfg: WorldConfig = WorldConfig()) -> Scene:
    return sample_scene(np.random.default_rng(seed), cfg)


def render(seed: int, cfg: WorldConfig = WorldConfig()) -> Render:
    """The scene of `seed`, rendered: image, caption, masks."""
    return render_scene(scene_for_seed(seed, cfg))


def render_many(seeds: Iterable[int], cfg: WorldConfig = WorldConfig()) -> list[Render]:
    return [render(int(s), cfg) for s in seeds]


@dataclass
class RenderedBatch:
    """Many renders as arrays: images uint8 [N, 64, 64, 3] and their scenes (captions derive from them)."""

    images: np.ndarray
    scenes: list[Scene] = field(default_factory=list)


def render_batch(seeds: Sequence[int], cfg: WorldConfig = WorldConfig(), workers: int = 1) -> RenderedBatch:
    """Render `seeds` into one array, in order; `workers` > 1 uses that many processes (same bytes)."""
    seeds = [int(s) for s in seeds]
    if workers > 1 and len(seeds) > 256:
        from concurrent.futures import ProcessPoolExecutor

        chunks = [seeds[i : i + 512] for i in range(0, len(seeds), 512)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_render_chunk, chunks, [cfg] * len(chunks)))
        return RenderedBatch(np.concatenate([p.images for p in parts]), [s for p in parts for s in p.scenes])
    return _render_chunk(seeds, cfg)


def _render_chunk(seeds: Sequence[int], cfg: WorldConfig) -> RenderedBatch:
    images = np.empty((len(seeds), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    scenes = []
    for i, seed in enumerate(seeds):
        r = render(seed, cfg)
        images[i] = r.image
        scenes.append(r.scene)
    return RenderedBatch(images, scenes)
