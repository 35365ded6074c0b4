"""The pretraining set: world renders with tokenized captions and hard-negative captions, kept on the device.

Rendered once per run from fixed seeds (in parallel processes), so a resumed run sees the same set without
storing it. Each image has two positive captions (with and without the background named) and, for the
contrastive stage, a hard negative of each: the same words with the two objects swapped, or with one
attribute changed, so the text encoder must bind attributes to their objects and slots.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from clif_core.sandbox.attributes import COLOUR_NAMES, SHAPES, TEXTURES
from clif_core.sandbox.oracle_train import render_set
from clif_core.sandbox.scene import Figure, Placed, Scene, Shape, caption, describe
from clif_core.sandbox.world import WorldConfig

MAX_TOKENS = 77


@dataclass
class WorldSet:
    images: torch.Tensor  # uint8 [N, 3, 64, 64]
    ids: torch.Tensor  # int64 [N, 2, 77]: caption with / without the background
    negative_ids: torch.Tensor  # int64 [N, 2, 77]: a hard negative of each
    empty_ids: torch.Tensor  # int64 [77]: the empty prompt (classifier-free guidance)
    objects: torch.Tensor  # bool [N, 64, 64]: pixels of any object (the VAE weighs them above the background)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device) -> "WorldSet":
        return WorldSet(*(t.to(device) for t in (self.images, self.ids, self.negative_ids, self.empty_ids, self.objects)))


def _other(rng: np.random.Generator, values: tuple[str, ...], current: str) -> str:
    return str(rng.choice([v for v in values if v != current]))


def _perturb(thing, rng: np.random.Generator):
    """The thing with one captioned attribute changed."""
    if isinstance(thing, Shape):
        field = str(rng.choice(["shape", "colour", "texture"]))
        values = {"shape": SHAPES, "colour": COLOUR_NAMES, "texture": TEXTURES}[field]
        return replace(thing, **{field: _other(rng, values, getattr(thing, field))})
    assert isinstance(thing, Figure)
    part_name = str(rng.choice(["head", "body"]))
    part = getattr(thing, part_name)
    return replace(thing, **{part_name: replace(part, colour=_other(rng, COLOUR_NAMES, part.colour))})


def hard_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """A scene whose caption uses nearly the same words but describes another image."""
    objs = scene.objects
    if len(objs) == 2 and describe(objs[0].thing) != describe(objs[1].thing) and rng.random() < 0.7:
        swapped = (Placed(objs[1].thing, objs[0].placement), Placed(objs[0].thing, objs[1].placement))
        return replace(scene, objects=swapped)
    i = int(rng.integers(len(objs)))
    changed = list(objs)
    changed[i] = Placed(_perturb(objs[i].thing, rng), objs[i].placement)
    return replace(scene, objects=tuple(changed))


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    out = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return out.input_ids.long()


def build_world_set(
    tokenizer,
    n: int,
    seed: int = 0,
    cfg: WorldConfig = WorldConfig(),
    workers: int = 1,
    device: Optional[torch.device] = None,
) -> WorldSet:
    """Render `n` scenes (seeds derived from `seed`) and tokenize their captions and hard negatives."""
    start = seed * 100_000_000 + 500_000_000  # a range the oracle's training and evaluation never use
    rendered = render_set(start, n, cfg, workers)
    rng = np.random.default_rng([seed, 17])
    positives, negatives = [], []
    for scene in rendered.scenes:
        neg = hard_negative(scene, rng)
        positives += [caption(scene, background=True), caption(scene, background=False)]
        negatives += [caption(neg, background=True), caption(neg, background=False)]
    ids = tokenize(tokenizer, positives).view(n, 2, MAX_TOKENS)
    neg_ids = tokenize(tokenizer, negatives).view(n, 2, MAX_TOKENS)
    world = WorldSet(rendered.images, ids, neg_ids, tokenize(tokenizer, [""])[0], rendered.union)
    return world.to(device) if device is not None else world
