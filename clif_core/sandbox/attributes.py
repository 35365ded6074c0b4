"""The sandbox world's vocabulary: every attribute value an object or figure part can take.

The order of each tuple is part of the oracle's weights (class indices): append new values at the end and
retrain the oracle, never reorder.
"""

from __future__ import annotations

from typing import Mapping

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "heart", "cross")

# Saturated, hue-distinct colours for objects and figure parts (RGB 0..255).
COLOURS: Mapping[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (40, 165, 60),
    "cyan": (25, 185, 205),
    "blue": (40, 75, 215),
    "purple": (135, 55, 185),
    "pink": (240, 115, 185),
}
COLOUR_NAMES = tuple(COLOURS)

# Details may also be white or black: they sit on a coloured part, never on the background.
DETAIL_COLOURS: Mapping[str, tuple[int, int, int]] = {**COLOURS, "white": (250, 250, 250), "black": (25, 25, 25)}
DETAIL_COLOUR_NAMES = tuple(DETAIL_COLOURS)

TEXTURES = ("plain", "striped", "dotted", "checkered")

HEAD_SHAPES = ("round", "square", "pointy")
BODY_SHAPES = ("boxy", "round", "flared")
ACCESSORIES = ("hat", "crown", "bowtie")
DETAILS = ("badge", "belt", "eyes")  # never named in captions: the characters' identifying marks
POSES = ("arms down", "arms out", "arms up")

# Pale, low-saturation backgrounds so objects stand out; gradients run between two of them.
BACKGROUNDS: Mapping[str, tuple[int, int, int]] = {
    "white": (246, 246, 244),
    "light gray": (205, 205, 205),
    "cream": (243, 233, 200),
    "pale blue": (198, 220, 242),
    "pale green": (205, 235, 205),
    "pale pink": (245, 215, 222),
    "lavender": (225, 215, 242),
    "sand": (225, 205, 170),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
GRADIENT_DIRECTIONS = ("vertical", "horizontal", "diagonal")

SLOTS = ("left", "right", "center")
