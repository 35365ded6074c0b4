"""The pretraining steps' shortcuts change nothing: cached text contexts and trimmed padding give the losses
the uncached, untrimmed computation gives (the speed they buy is measured by benchmarks/pretrain_cpu.py)."""

from __future__ import annotations

import pytest
import torch

from clif_core.sandbox import pretrain_losses as losses
from clif_core.sandbox.model_arch import (
    SandboxArch,
    build_text_encoder,
    build_unet,
    build_vae,
    build_vision_tower,
    tokenizer,
)
from clif_core.sandbox.pretrain_data import build_world_set

ARCH = SandboxArch.test()


@pytest.fixture(scope="module")
def world():
    return build_world_set(tokenizer(), 24, seed=3)


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(0)
    return build_text_encoder(ARCH).eval()


def test_trimmed_padding_keeps_pooled_and_caption_states(world, text):
    ids = world.ids[:, 0]
    trimmed = losses.trim_padding(ids)
    assert trimmed.shape[1] < ids.shape[1] // 2 + 10  # captions are far shorter than 77 tokens
    with torch.no_grad():
        full, cut = text(input_ids=ids), text(input_ids=trimmed)
    torch.testing.assert_close(cut.pooler_output, full.pooler_output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cut.last_hidden_state, full.last_hidden_state[:, : trimmed.shape[1]], rtol=1e-5, atol=1e-6)


def test_cached_contexts_equal_the_encoder_run_per_step(world, text):
    captions, empty = losses.text_contexts(text, world, chunk=7)  # chunking must not matter
    with torch.no_grad():
        torch.testing.assert_close(captions[5, 1], text(input_ids=world.ids[5, 1][None]).last_hidden_state[0])
        torch.testing.assert_close(empty, text(input_ids=world.empty_ids[None]).last_hidden_state[0])
    assert captions.shape[:2] == (len(world), 2)


def test_unet_loss_from_cache_matches_the_encoder_in_the_loop(world, text):
    """The same seed draws the same batch, timesteps and noise; only where the context comes from differs."""
    from diffusers import DDPMScheduler

    from clif_core.sandbox.model_arch import scheduler_config

    torch.manual_seed(1)
    vae, unet = build_vae(ARCH).eval(), build_unet(ARCH)
    schedule = DDPMScheduler.from_config(scheduler_config())
    moments = losses.latent_moments(vae, world, chunk=10)
    assert moments.shape == (len(world), 8, 16, 16)
    cached = losses.unet_loss(unet, schedule, moments, losses.text_contexts(text, world), 1.0, 0.5, 0.3, 5.0)

    class EncoderEveryStep(torch.utils.data.Dataset):  # a text "cache" that runs the encoder when indexed
        def __getitem__(self, key):
            idx, variant = key
            with torch.no_grad():
                return text(input_ids=world.ids[idx, variant]).last_hidden_state

    empty = text(input_ids=world.empty_ids[None]).last_hidden_state[0].detach()
    in_loop = losses.unet_loss(unet, schedule, moments, (EncoderEveryStep(), empty), 1.0, 0.5, 0.3, 5.0)
    idx = torch.tensor([3, 7, 7, 0, 21, 12, 5, 9])
    a = cached(idx, torch.Generator().manual_seed(9))
    b = in_loop(idx, torch.Generator().manual_seed(9))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(a) and a > 0


def test_clip_loss_prefers_true_captions_after_a_few_steps(world, text):
    torch.manual_seed(2)
    vision = build_vision_tower(ARCH)
    scale = torch.nn.Parameter(torch.tensor(2.0))
    params = list(text.parameters()) + list(vision.parameters()) + [scale]
    loss_fn = losses.random_batches(losses.clip_loss(text.train(), vision, scale, world, 0.5), len(world), 16)
    opt = torch.optim.AdamW(params, lr=3e-3)
    first = None
    for step in range(25):
        loss = loss_fn(torch.Generator().manual_seed(step % 2))
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    text.eval()
    assert float(loss.detach()) < first * 0.8


def test_pretrain_benchmark_smoke_run():
    """benchmarks/pretrain_cpu.py runs every stage and prints a ratio per stage (figures are not asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_cpu.py"
    out = subprocess.run(
        [sys.executable, str(script), "--preset", "test", "--images", "48", "--blocks", "1", "--steps", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    assert [line.split()[0] for line in out.splitlines() if "ratio" in line] == ["vae", "clip", "unet"]
