"""Tiny augmented datasets for the training tests, and the drawn figures they (and the augment tests) start from."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from clif_core.augment.common_concepts import CommonConcept
from clif_core.augment.compose import AugmentConfig
from clif_core.augment.dataset import build_dataset
from clif_core.augment.fallback import FallbackSegmenter
from clif_core.concepts.spec import Concept

RES = 64  # the tiny models' image size


def figure(head, body, bg=(235, 238, 240), size=(80, 96), shift=0) -> Image.Image:
    """A person-like figure: a `head`-coloured circle over a `body`-coloured block on `bg`."""
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    d.ellipse((25 + shift, 8, 55 + shift, 38), fill=head)
    d.rectangle((18 + shift, 38, 62 + shift, 88), fill=body)
    return img


def make_dataset(folder: Path, class_words=("person", "person"), seed: int = 1, resolution: int = RES,
                 **counts) -> Path:
    """Two concepts (alice: red head, blue body; bob: green head, orange body) and one common word."""
    alice = Concept("alice", "<alice>", class_words[0],
                    [figure((200, 40, 40), (40, 40, 190)), figure((200, 40, 40), (40, 40, 190), shift=4)],
                    parts=["head", "body"])
    bob = Concept("bob", "<bob>", class_words[1],
                  [figure((40, 170, 40), (190, 140, 30)), figure((40, 170, 40), (190, 140, 30), shift=-4)],
                  parts=["head", "body"])
    chef = Image.new("RGB", (80, 80), (210, 215, 220))
    ImageDraw.Draw(chef).polygon([(40, 5), (75, 75), (5, 75)], fill=(20, 20, 20))
    config = dict(resolution=resolution, n_global=4, n_region=4, n_mix=4, n_single=2, n_parts=2, seed=seed)
    config.update(counts)
    return build_dataset([alice, bob], folder, AugmentConfig(**config), FallbackSegmenter(),
                         [CommonConcept("chef", [chef])])
