"""Purification: DDIM inversion under the original model, regeneration with the erased one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clif_core.erase.purify import model_size, purify
from clif_core.errors import Cancelled, ClifError
from clif_core.progress import Reporter

# `made` (a tiny base and an erasure patch made on it) and `other_base` are session fixtures in conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def picture(width: int, height: int) -> Image.Image:
    """Two flat halves: a layout a regenerated image can keep or lose."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (230, 40, 40)
    array[:, width // 2 :] = (30, 60, 220)
    return Image.fromarray(array)


def test_model_size_rounds_each_side_to_what_the_model_takes(made):
    base, _, _ = made
    assert model_size(base, 50, 37) == (48, 32)  # tiny model: multiples of 8 × 2
    assert model_size(base, 3, 3) == (16, 16)


def test_purified_image_has_the_input_size(made):
    base, patch, _ = made
    image = picture(90, 67)  # no multiple of the model's 16 px
    steps = []
    out = purify(base, patch, image, steps=4, reporter=Reporter(progress=lambda s, t, p=None: steps.append((s, t))))
    assert out.size == (90, 67) and out.mode == "RGB"
    assert steps[-1] == (8, 8)  # 4 inversion + 4 regeneration steps


def test_purify_depends_on_the_patch_and_partial_strength_runs_fewer_steps(made):
    base, patch, _ = made
    image = picture(64, 64)
    full = np.asarray(purify(base, patch, image, steps=4)).astype(int)
    none = np.asarray(purify(base, patch, image, steps=4, patch_strength=0.0)).astype(int)
    assert np.abs(full - none).max() > 0  # the erased model regenerates, not the original
    steps = []
    purify(base, patch, image, steps=4, strength=0.5, reporter=Reporter(progress=lambda s, t, p=None: steps.append(t)))
    assert steps[-1] == 4


def test_purify_refuses_bad_settings_another_base_and_stops_on_request(made, other_base):
    base, patch, _ = made
    image = picture(64, 64)
    with pytest.raises(ClifError, match="strength"):
        purify(base, patch, image, strength=0)
    with pytest.raises(ClifError, match="steps"):
        purify(base, patch, image, steps=0)
    with pytest.raises(ClifError, match="was made on base"):
        purify(other_base, patch, image, steps=2)
    with pytest.raises(Cancelled):
        purify(base, patch, image, steps=4, reporter=Reporter(should_stop=lambda: True))
