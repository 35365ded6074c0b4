"""The committed sandbox model draws what it is asked: a fixed set of held-out one-object prompts, drawn and
read back by the oracle, stays above a floor set from the shipped model's measured rate (docs/sandbox.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clif_core.models.loader import load_base_model
from clif_core.sandbox.oracle import Oracle, scene_correct
from clif_core.sandbox.prompt_following import generate, prompt_scenes
from clif_core.sandbox.scene import caption

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = Path(__file__).resolve().parents[1] / "clif_core" / "sandbox" / "weights" / "base" / "diffusers"
PROMPTS = 32
STEPS = 20
# Documented in docs/sandbox.md: the shipped model gets 23 of these 32 prompts right at 20 steps (0.755 of the
# 200-prompt set at 30 steps); the floor leaves room for BLAS differences between machines and still fails a
# model that draws blobs (the smoke model: 0 of 32) or a broken sampler or loader.
FLOOR = 0.5


def test_held_out_one_object_prompts_come_out_right():
    scenes = prompt_scenes(PROMPTS, seed=0)["one_object"]
    prompts = [caption(s, background=False) for s in scenes]
    images = generate(load_base_model(BASE, device="cpu"), prompts, steps=STEPS)
    readings = Oracle.load().read(images)
    right = [p for s, r, p in zip(scenes, readings, prompts) if scene_correct(s, r)]
    rate = len(right) / PROMPTS
    assert rate >= FLOOR, f"{len(right)} of {PROMPTS} one-object prompts drawn right (floor {FLOOR:.2f})"
