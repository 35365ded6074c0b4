"""Sandbox pretraining steps on the CPU: the step as it was first written beside the pack's step, per stage.

    .venv/bin/python benchmarks/pretrain_cpu.py                  # 2 threads, the `cpu` preset's architecture
    .venv/bin/python benchmarks/pretrain_cpu.py --preset test --images 64 --blocks 1 --steps 1   # smoke run

Per stage (vae, clip, unet) both steps draw the same batches from the same pre-rendered world set and do the
same optimizer update (AdamW, clipped gradients); the printed ratio is pack images/s over the first version's.

- first version (`plain_*` below): the UNet step runs the frozen text encoder on 64 × 77 tokens every step;
  the CLIP step encodes all 77 positions; the VAE step's loss is plain L1.
- pack (`clif_core.sandbox.pretrain_losses`): text encoder outputs cached per caption, padding trimmed; the
  VAE step computes the preset's objective (L1 weighted to objects + gradients + patch spectra), which
  costs time per step and buys what the oracle can read back (docs/sandbox.md): its ratio is below 1.

Timing alternates blocks of steps of the two sides so that a machine whose speed drifts affects both alike;
each side's figure is its fastest block (other processes only ever slow a block down). Run on a quiet machine: another process on the two cores
slows both sides, far more than 2x when OpenMP threads spin (set OMP_WAIT_POLICY=PASSIVE).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clif_core.sandbox import pretrain_losses as losses  # noqa: E402
from clif_core.sandbox.model_arch import (  # noqa: E402
    SandboxArch,
    build_text_encoder,
    build_unet,
    build_vae,
    build_vision_tower,
    scheduler_config,
    tokenizer,
)
from clif_core.sandbox.pretrain_config import PRESETS  # noqa: E402
from clif_core.sandbox.pretrain_data import build_world_set  # noqa: E402


def plain_unet_loss(unet, text, noise_schedule, moments, world, sf, batch_size, p_bg, dropout, gamma):
    """The UNet step as first written: the frozen text encoder runs inside every step."""
    alphas = noise_schedule.alphas_cumprod

    def loss(gen):
        idx = torch.randint(len(world), (batch_size,), generator=gen)
        mean, logvar = moments[idx].float().chunk(2, dim=1)
        latents = (mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)) * sf
        variant = (torch.rand(batch_size, generator=gen) >= p_bg).long()
        ids = world.ids[idx, variant]
        drop = torch.rand(batch_size, generator=gen) < dropout
        ids = torch.where(drop[:, None], world.empty_ids[None, :], ids)
        with torch.no_grad():
            context = text(input_ids=ids).last_hidden_state
        steps = torch.randint(0, 1000, (batch_size,), generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        pred = unet(noise_schedule.add_noise(latents, noise, steps), steps, encoder_hidden_states=context).sample
        target = noise_schedule.get_velocity(latents, noise, steps)
        snr = alphas[steps] / (1 - alphas[steps])
        weight = torch.clamp(snr, max=gamma) / (snr + 1)
        return (weight * F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))).mean()

    return loss


def plain_clip_loss(text, vision, logit_scale, world, batch_size, p_bg):
    """The CLIP step as first written: all 77 token positions encoded."""
    import math

    def loss(gen):
        idx = torch.randint(len(world), (batch_size,), generator=gen)
        variant = (torch.rand(batch_size, generator=gen) >= p_bg).long()
        ids = torch.cat([world.ids[idx, variant], world.negative_ids[idx, variant]])
        texts = F.normalize(text(input_ids=ids).pooler_output.float(), dim=-1)
        images = F.normalize(vision(pixel_values=losses.normalise_for_vision(losses.pixels(world, idx))).image_embeds, dim=-1)
        scale = logit_scale.clamp(max=math.log(100.0)).exp()
        target = torch.arange(batch_size)
        return (F.cross_entropy(scale * images @ texts.T, target) + F.cross_entropy(scale * texts[:batch_size] @ images.T, target)) / 2

    return loss


def timed(loss_fn, params, steps: int, seed: int) -> float:
    """Seconds per step over `steps` optimizer steps (forward, backward, clip, AdamW)."""
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return (time.perf_counter() - start) / steps


def compare(name: str, first, pack, first_params, pack_params, batch: int, steps: int, blocks: int) -> dict:
    timed(first, first_params, 2, 0), timed(pack, pack_params, 2, 0)  # warm-up (allocators, one-off kernels)
    a, b = [], []
    for block in range(blocks):
        a.append(timed(first, first_params, steps, block))
        b.append(timed(pack, pack_params, steps, block))
    first_ips, pack_ips = batch / min(a), batch / min(b)
    print(f"{name:5s} batch {batch:4d}  first {first_ips:8.1f} img/s   pack {pack_ips:8.1f} img/s   "
          f"ratio {pack_ips / first_ips:5.2f}x", flush=True)
    return {"stage": name, "first": first_ips, "pack": pack_ips, "ratio": pack_ips / first_ips}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=["cpu", "cpu-smoke", "test"], default="cpu",
                   help="whose architecture and batch sizes (test: a seconds-long smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=2048, help="world scenes rendered for the batches")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--blocks", type=int, default=5, help="timed blocks per side (the fastest is reported)")
    p.add_argument("--stages", default="vae,clip,unet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    arch: SandboxArch = cfg.arch
    print(f"torch {torch.__version__}, {args.threads} thread(s), architecture of preset {args.preset}", flush=True)
    world = build_world_set(tokenizer(), args.images, seed=1, workers=min(2, args.threads))
    torch.manual_seed(0)
    vae, text, vision, unet = build_vae(arch), build_text_encoder(arch), build_vision_tower(arch), build_unet(arch)
    stages = args.stages.split(",")
    if "vae" in stages:
        first, pack = (losses.random_batches(losses.vae_loss(vae, world, cfg.kl_weight, objective), len(world),
                                             cfg.vae.batch_size) for objective in (losses.VaeObjective(), cfg.vae_objective))
        params = list(vae.parameters())
        compare("vae", first, pack, params, params, cfg.vae.batch_size, args.steps, args.blocks)
    if "clip" in stages:
        scale = torch.nn.Parameter(torch.tensor(2.0))
        first = plain_clip_loss(text, vision, scale, world, cfg.clip.batch_size, cfg.p_background_caption)
        pack = losses.random_batches(losses.clip_loss(text, vision, scale, world, cfg.p_background_caption), len(world),
                                     cfg.clip.batch_size)
        params = list(text.parameters()) + list(vision.parameters()) + [scale]
        compare("clip", first, pack, params, params, cfg.clip.batch_size, args.steps, args.blocks)
    if "unet" in stages:
        from diffusers import DDPMScheduler

        schedule = DDPMScheduler.from_config(scheduler_config())
        text.eval()
        moments = losses.latent_moments(vae.eval(), world)
        first = plain_unet_loss(unet, text, schedule, moments, world, 1.0, cfg.unet.batch_size,
                                cfg.p_background_caption, cfg.text_dropout, cfg.min_snr_gamma)
        pack = losses.random_batches(
            losses.unet_loss(unet, schedule, moments, losses.text_contexts(text, world), 1.0, cfg.p_background_caption,
                             cfg.text_dropout, cfg.min_snr_gamma), len(world), cfg.unet.batch_size)
        params = list(unet.parameters())
        compare("unet", first, pack, params, params, cfg.unet.batch_size, args.steps, args.blocks)


if __name__ == "__main__":
    main()
