"""On a CUDA machine: the sampler's CUDA-graph replay of the UNet gives what eager calls give (skipped without CUDA)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clif_core.models.tiny import build_tiny_model
from clif_core.progress import Reporter
from clif_core.sample import sampler
from clif_core.sample.config import SampleConfig
from clif_core.sample.regional import layout_regions
from tests.helpers.concept_files import make_concept_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_cuda(family: str):
    base = build_tiny_model(family, 0)
    for module in (base.unet, base.vae, *(s.encoder for s in base.text)):
        module.to("cuda")
    return dataclasses.replace(base, device=torch.device("cuda"))


@pytest.mark.parametrize("family, scheduler", [("sd1", "euler_a"), ("sd1", "dpmpp_2m_karras"), ("sdxl", "ddim")])
def test_graph_replay_matches_eager_unet_calls(monkeypatch, family, scheduler):
    base = on_cuda(family)
    cf = make_concept_file(base, seed=4)
    config = SampleConfig("<alice> and <bob> at a table", negative_prompt="blurry", seed=3, steps=4, cfg=5.0,
                          scheduler=scheduler, batch=2,
                          regions=layout_regions("left_right", ["<alice>, a woman", "<bob>, a man"]))
    replays = []

    class Counting(sampler.GraphedUNet):
        def __call__(self, x, t):
            replays.append(1)
            return super().__call__(x, t)

    monkeypatch.setattr(sampler, "GraphedUNet", Counting)
    logged: list[str] = []
    graphed = sampler.sample(base, config, [cf], Reporter(log=logged.append))
    assert len(replays) == config.steps and not logged

    monkeypatch.setattr(sampler, "_graphed", lambda unet, x, t, context, added, eager, reporter: eager)
    eager = sampler.sample(base, config, [cf])
    torch.testing.assert_close(graphed.latents, eager.latents, rtol=1e-4, atol=1e-4)
