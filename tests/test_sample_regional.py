"""Regional composition: layouts, weights, and region prompts landing where they should inside cross-attention."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from clif_core.errors import ClifError
from clif_core.models.prompts import encode_prompt
from clif_core.models.tiny import TINY_IMAGE_SIZE, build_tiny_model
from clif_core.sample.config import Region, SampleConfig
from clif_core.sample.regional import (
    build_regions,
    layout_boxes,
    layout_regions,
    parse_boxes,
    region_weights,
)
from clif_core.sample.sampler import sample
from tests.helpers.concept_files import make_concept_file

LEFT, RIGHT = "a red apple", "a blue car"


def test_named_layouts_tile_the_image():
    assert layout_boxes("left_right", 2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    assert layout_boxes("top_bottom", 3)[1] == pytest.approx((0.0, 1 / 3, 1.0, 2 / 3))
    # a grid of 3: two cells in the first row, one full-width cell below
    assert layout_boxes("grid", 3) == [(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)]
    for layout in ("left_right", "top_bottom", "grid"):
        for n in range(1, 7):
            w = region_weights([Region("x", box=b, strength=1.0) for b in layout_boxes(layout, n)], 24, 36)
            assert torch.equal(w[1:].sum(0), torch.ones(24, 36)), (layout, n)  # every pixel in exactly one region
    with pytest.raises(ClifError, match="layout 'diagonal' is not known"):
        layout_boxes("diagonal", 2)


def test_weights_sum_to_one_and_overlaps_are_shared():
    regions = [Region("a", box=(0.0, 0.0, 0.75, 1.0), strength=1.0),
               Region("b", box=(0.25, 0.0, 1.0, 1.0), strength=0.5),
               Region("c", mask=np.ones((5, 5), np.float32) * 0.2, strength=1.0)]
    w = region_weights(regions, 8, 8)
    assert w.shape == (4, 8, 8)
    torch.testing.assert_close(w.sum(0), torch.ones(8, 8))
    assert (w >= 0).all()
    # column 0: only a (1.0) and c (0.2) → scaled to sum 1, global weight 0
    torch.testing.assert_close(w[:, 0, 0], torch.tensor([0.0, 1 / 1.2, 0.0, 0.2 / 1.2]))
    # column 7: b at 0.5 and c at 0.2 → the global prompt keeps 0.3
    torch.testing.assert_close(w[:, 0, 7], torch.tensor([0.3, 0.0, 0.5, 0.2]))


def test_build_regions_from_user_text():
    assert build_regions("top_bottom", ["a", " ", "b"]) == layout_regions("top_bottom", ["a", "b"])
    boxed = build_regions("boxes", ["a", "b"], "0,0,0.5,1; 0.5,0,1,1", strength=0.6)
    assert [(r.box, r.strength) for r in boxed] == [((0, 0, 0.5, 1), 0.6), ((0.5, 0, 1, 1), 0.6)]
    masks = torch.zeros(2, 64, 64)
    assert [r.mask.shape for r in build_regions("masks", ["a", "b"], masks=masks)] == [(64, 64), (64, 64)]
    with pytest.raises(ClifError, match=r"region 2 \('b'\): the mask is 4x4, below the minimum of 64 px"):
        build_regions("masks", ["a", "b"], masks=[masks[0], torch.zeros(4, 4)])
    with pytest.raises(ClifError, match="1 box\\(es\\) for 2 region prompt"):
        build_regions("boxes", ["a", "b"], "0,0,1,1")
    with pytest.raises(ClifError, match="0 mask\\(s\\) for 1 region prompt"):
        build_regions("masks", ["a"])
    with pytest.raises(ClifError, match="no region prompt was given"):
        build_regions("grid", ["", "  "])


def test_parse_boxes():
    assert parse_boxes("0,0,0.5,1; 0.5,0,1,1\n") == [(0, 0, 0.5, 1), (0.5, 0, 1, 1)]
    with pytest.raises(ClifError, match="box 2 '0.5,0,1' is not four numbers"):
        parse_boxes("0,0,0.5,1; 0.5,0,1")


@pytest.mark.parametrize("region, message", [
    (Region("x"), "give either a box or a mask, not neither"),
    (Region("x", box=(0, 0, 1, 1), mask=np.ones((2, 2))), "not both"),
    (Region("x", box=(0.5, 0, 0.5, 1)), "is not \\(x0, y0, x1, y1\\)"),
    (Region("x", box=(0, 0, 1, 1), strength=1.5), "strength is 1.5"),
    (Region("x", mask=np.ones((2, 2, 2))), "mask must be 2-D"),
])
def test_bad_regions_are_refused(sd1, region, message):
    with pytest.raises(ClifError, match=f"region 1 \\('x'\\): .*{message}"):
        sample(sd1, SampleConfig("a table", steps=1, regions=(region,)))


def cross_attention_modules(unet) -> list[Attention]:
    return [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


def test_region_prompts_replace_the_global_prompt_inside_their_regions_in_every_cross_attention(sd1):
    """Hook every cross-attention layer and recompute what it must output with a stock attention processor:
    under each region's mask the region prompt's attention, elsewhere the global prompt's, and the
    negative (unconditional) half untouched."""
    strength = 0.75
    regions = layout_regions("left_right", [LEFT, RIGHT], strength=strength)
    with torch.inference_mode():
        contexts = [encode_prompt(sd1, p).embeds for p in (LEFT, RIGHT)]
    stock = AttnProcessor2_0()
    checked: dict[int, int] = {}

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs["encoder_hidden_states"]
        batch, tokens = hidden.shape[0] // 2, hidden.shape[1]
        side = round(tokens ** 0.5)
        left = (torch.arange(tokens) % side < side // 2)[None, :, None]
        uncond, cond = output[:batch], output[batch:]
        torch.testing.assert_close(uncond, stock(module, hidden[:batch], context[:batch]), rtol=1e-4, atol=1e-5)
        global_out = stock(module, hidden[batch:], context[batch:])
        region_out = [stock(module, hidden[batch:], c.expand(batch, -1, -1)) for c in contexts]
        expected = torch.where(left, (1 - strength) * global_out + strength * region_out[0],
                               (1 - strength) * global_out + strength * region_out[1])
        torch.testing.assert_close(cond, expected, rtol=1e-4, atol=1e-5)
        assert (cond - global_out).abs().amax() > 1e-3  # the regions did change something here
        checked[side] = checked.get(side, 0) + 1

    modules = cross_attention_modules(sd1.unet)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules]
    try:
        sample(sd1, SampleConfig("a table in a garden", steps=2, cfg=4.0, regions=regions))
    finally:
        for h in handles:
            h.remove()
    latent = TINY_IMAGE_SIZE // 2
    assert set(checked) == {latent, latent // 2}  # both UNet resolutions
    assert sum(checked.values()) == 2 * len(modules)  # every cross-attention layer at every step
    assert all(not hasattr(m.processor, "owner") for m in modules)  # the stock processors are back


def test_regions_with_the_global_prompt_change_nothing_and_other_prompts_do(sd1):
    config = SampleConfig("a table in a garden", seed=3, steps=2)
    plain = sample(sd1, config)
    same = sample(sd1, dataclasses.replace(config, regions=layout_regions("grid", [config.prompt] * 3)))
    torch.testing.assert_close(same.latents, plain.latents, rtol=0, atol=1e-3)  # 0.2·x + 0.8·x rounds
    other = sample(sd1, dataclasses.replace(config, regions=layout_regions("left_right", [LEFT, RIGHT])))
    assert (other.latents - plain.latents).abs().mean() > 1e-2
    assert other.recipe["regions"] == [
        {"prompt": LEFT, "box": [0.0, 0.0, 0.5, 1.0], "strength": 0.8},
        {"prompt": RIGHT, "box": [0.5, 0.0, 1.0, 1.0], "strength": 0.8},
    ]


def test_mask_regions_and_concept_placeholders_in_region_prompts(sd1):
    cf = make_concept_file(sd1, seed=4, text_lora=False)
    mask = np.zeros((64, 64), np.float32)
    mask[:, 40:] = 1.0
    regions = (Region("<alice>, a woman", box=(0.0, 0.0, 0.5, 1.0)), Region("<bob>, a man", mask=mask))
    result = sample(sd1, SampleConfig("two people in a park", steps=2, regions=regions), [cf])
    assert result.recipe["regions"][1]["mask"] == "custom 64x64"
    with pytest.raises(ClifError, match="region 2 prompt: .*<carol>"):
        sample(sd1, SampleConfig("two people", steps=1, regions=(regions[0], Region("<carol>", mask=mask))), [cf])


def test_sdxl_regions_run():
    sdxl = build_tiny_model("sdxl", 0)
    plain = sample(sdxl, SampleConfig("a table", seed=1, steps=2))
    regional = sample(sdxl, SampleConfig("a table", seed=1, steps=2,
                                         regions=layout_regions("top_bottom", [LEFT, RIGHT])))
    assert regional.images[0].size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert (regional.latents - plain.latents).abs().mean() > 1e-2
