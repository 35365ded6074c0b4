"""Concept isolation in the core sampler: a concept file bound to a region adds nothing outside that region."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

import clif_core.sample.sampler as sampler_module
from clif_core.errors import ClifError
from clif_core.sample.config import Region, SampleConfig
from clif_core.sample.isolation import layer_mask, soft_mask
from clif_core.sample.regional import layout_regions
from clif_core.sample.sampler import ConceptUse, sample
from tests.helpers.concept_files import make_concept_file

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "ff.net.0.proj", "time_emb_proj")


@pytest.fixture(scope="module")
def alice(sd1):
    return make_concept_file(sd1, seed=5, names=("alice",), unet_targets=TARGETS)


def regions():
    return layout_regions("left_right", ["<alice>, a woman", "a man"])


def test_soft_mask_is_zero_outside_the_region_and_resizes_by_area():
    box = Region("x", box=(0.0, 0.0, 0.5, 1.0))
    mask = soft_mask(box, (32, 32), edge=0.05)
    assert (mask[:, 16:] == 0).all() and mask[:, 4:12].min() > 0.99  # hard outside, whole deep inside
    assert 0.3 < float(mask[16, 15]) < 0.7  # the soft edge, inside the box
    assert torch.equal(soft_mask(box, (32, 32), edge=0.0), (torch.arange(32) < 16).float().expand(32, 32))
    low = layer_mask(mask, 5, 5)  # a 5-wide level: the middle column straddles the border
    assert (low[:, 3:] == 0).all() and (low[:, 2] > 0).all()
    free = np.zeros((64, 64), np.float32)
    free[10:30, 40:60] = 1.0
    assert (soft_mask(Region("y", mask=free), (32, 32))[:, :20] == 0).all()


def test_isolated_lora_adds_nothing_outside_its_region_at_every_patched_layer(sd1, alice, monkeypatch):
    """Hook every peft LoRA layer of the UNet and the text encoder; the LoRA's added output is the layer's output
    minus its base layer's. Feature-map layers: zero wherever the region (left half) is not, non-zero inside.
    Prompt-side layers (cross-attention k/v, text encoder): non-zero only for the region's own prompt."""
    added: dict[str, list[torch.Tensor]] = defaultdict(list)

    def record(name):
        def hook(module, args, output):
            added[name].append(output - module.base_layer(args[0]))

        return hook

    real_enter = sampler_module.MaskedLoRA.__enter__
    handles = []

    def enter(self):  # hook the peft layers once apply_concepts has made them, before sampling starts
        for module, prefix in [(sd1.unet, "unet")] + [(s.encoder, s.name) for s in sd1.text]:
            for name, layer in module.named_modules():
                if isinstance(layer, LoraLayer):
                    handles.append(layer.register_forward_hook(record(f"{prefix}.{name}")))
        return real_enter(self)

    monkeypatch.setattr(sampler_module.MaskedLoRA, "__enter__", enter)
    try:
        sample(sd1, SampleConfig("two people in a park", steps=2, cfg=4.0, regions=regions()),
               [ConceptUse(alice, 1.0, region=1)])
    finally:
        for h in handles:
            h.remove()

    kinds = defaultdict(int)
    for name, outputs in added.items():
        if name.startswith("clip_"):  # text encoder: prompt, negative prompt, region 1, region 2
            assert [bool(o.abs().amax() > 0) for o in outputs] == [False, False, True, False], name
            kinds["text"] += 1
        elif name.endswith("time_emb_proj"):
            assert all((o == 0).all() for o in outputs), name
            kinds["time"] += 1
        elif ".attn2.to_k" in name or ".attn2.to_v" in name:  # per UNet call: global, region 1, region 2
            assert [bool(o.abs().amax() > 0) for o in outputs] == [False, True, False] * 2, name
            kinds["prompt"] += 1
        else:
            for o in outputs:
                if o.ndim == 4:
                    width = o.shape[-1]
                    outside, inside = o[..., width // 2:], o[..., 1: width // 2 - 1]
                else:
                    side = round(o.shape[1] ** 0.5)
                    column = torch.arange(o.shape[1]) % side
                    outside, inside = o[:, column >= side // 2], o[:, (column >= 1) & (column < side // 2 - 1)]
                assert (outside == 0).all(), name
                assert inside.abs().amax() > 0, name
            kinds["spatial"] += 1
    assert kinds["text"] > 0 and kinds["time"] > 0 and kinds["prompt"] > 0 and kinds["spatial"] > 10
    assert not any(module._forward_hooks for module in sd1.unet.modules())  # every hook removed


def test_without_a_layout_nothing_isolates_and_the_base_is_bit_identical_afterwards(sd1, alice, monkeypatch):
    config = SampleConfig("<alice> in a park", seed=2, steps=2)
    plain = sample(sd1, config, [alice])
    isolated = sample(sd1, dataclasses.replace(config, prompt="a park", regions=regions()),
                      [ConceptUse(alice, 1.0, region=1)])
    assert isolated.recipe["concepts"][0]["region"] == 1
    assert "region" not in plain.recipe["concepts"][0]

    def refuse(*args, **kwargs):
        raise AssertionError("isolation must not be set up without a bound concept file")

    monkeypatch.setattr(sampler_module, "MaskedLoRA", refuse)
    assert torch.equal(sample(sd1, config, [alice]).latents, plain.latents)
    # a layout whose files are not bound takes the regional path of before, without isolation
    sample(sd1, dataclasses.replace(config, regions=regions()), [alice])
    assert not any(isinstance(m, LoraLayer) for m in sd1.unet.modules())


@pytest.mark.parametrize("use, config, message", [
    (ConceptUse(None, 1.0, region=1), SampleConfig("a park"), "isolated to region 1, but the run has no regional"),
    (ConceptUse(None, 1.0, region=3), SampleConfig("a park", regions=regions()), "the layout has regions 1 to 2"),
    (ConceptUse(None, 1.0, region=1), SampleConfig("<alice> in a park", regions=regions()),
     r"prompt uses <alice>, whose concept file is isolated to region 1.*Move <alice> into region 1 prompt"),
    (ConceptUse(None, 1.0, region=2), SampleConfig("a park", regions=regions()),
     r"region 1 prompt uses <alice>, whose concept file is isolated to region 2"),
])
def test_bad_bindings_are_refused_before_anything_is_applied(sd1, alice, use, config, message):
    with pytest.raises(ClifError, match=message):
        sample(sd1, config, [dataclasses.replace(use, file=alice)])
    assert not any(isinstance(m, LoraLayer) for m in sd1.unet.modules())
