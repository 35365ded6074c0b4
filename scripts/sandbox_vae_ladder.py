"""The VAE ladder of docs/sandbox.md: short VAE trainings with different objectives, each scored by the VAE
ceiling (the oracle on reconstructions of 1,000 fresh renders), to choose the `cpu` preset's objective.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/sandbox_vae_ladder.py --steps 1200 --threads 1

Each rung trains the `cpu` preset's VAE architecture from the same initial weights on the same 20,000 renders
(the pretraining set's first scenes) with the same batches, AdamW at 2e-3 with 50 warm-up steps and a cosine
decay, then prints one table row. Figures depend only on the objective, not on the machine (up to float
rounding across thread counts); the wall time does.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from clif_core.sandbox.model_arch import build_vae, tokenizer  # noqa: E402
from clif_core.sandbox.oracle_train import EVAL_SEED_BASE  # noqa: E402
from clif_core.sandbox.pretrain_config import PRESETS  # noqa: E402
from clif_core.sandbox.pretrain_data import build_world_set  # noqa: E402
from clif_core.sandbox.pretrain_losses import VaeObjective, random_batches, vae_loss  # noqa: E402
from clif_core.sandbox.vae_ceiling import vae_ceiling  # noqa: E402

RUNGS = {
    "L1 (the smoke preset's objective)": VaeObjective(),
    "L1 on objects x4, + gradients": VaeObjective(object_weight=3.0, gradient_weight=1.0),
    "the above + patch spectra": VaeObjective(object_weight=3.0, gradient_weight=1.0, spectrum_weight=1.0),
    "objects x9 (cpu preset)": VaeObjective(object_weight=8.0, gradient_weight=1.0, spectrum_weight=1.0),
    "objects x17": VaeObjective(object_weight=16.0, gradient_weight=1.0, spectrum_weight=1.0),
}
HEADS = ("colour", "texture", "head_colour", "head_texture", "accessory_colour", "detail_colour")


def train(objective: VaeObjective, world, steps: int, batch: int = 32, lr: float = 2e-3) -> torch.nn.Module:
    cfg = PRESETS["cpu"]
    torch.manual_seed(0)
    vae = build_vae(cfg.arch)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    loss_fn = random_batches(vae_loss(vae, world, cfg.kl_weight, objective), len(world), batch)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = loss_fn(gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
    return vae.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--renders", type=int, default=1000, help="fresh renders the ceiling is measured on")
    p.add_argument("--rungs", default=None, help="comma-separated rung numbers to run, from 1 (default: all)")
    args = p.parse_args()
    chosen = [int(i) for i in args.rungs.split(",")] if args.rungs else range(1, len(RUNGS) + 1)
    rungs = {name: objective for i, (name, objective) in enumerate(RUNGS.items(), 1) if i in chosen}
    torch.set_num_threads(args.threads)
    world = build_world_set(tokenizer(), 20_000, seed=0, workers=2)
    print(f"| objective | whole scene | with detail | {' | '.join(HEADS)} | seconds |")
    print("|---" * (len(HEADS) + 4) + "|")
    for name, objective in rungs.items():
        started = time.time()
        vae = train(objective, world, args.steps)
        seconds = time.time() - started
        ceiling = vae_ceiling(vae, n=args.renders, seed_base=EVAL_SEED_BASE + 50_000)
        rec = ceiling["reconstructed"]
        heads = " | ".join(f"{rec['heads'][h]:.2f}" for h in HEADS)
        print(f"| {name} | {rec['scene']:.3f} | {rec['scene_with_detail']:.3f} | {heads} | {seconds:.0f} |", flush=True)
    clean = ceiling["clean"]
    heads = " | ".join(f"{clean['heads'][h]:.2f}" for h in HEADS)
    print(f"| renders themselves | {clean['scene']:.3f} | {clean['scene_with_detail']:.3f} | {heads} | |")


if __name__ == "__main__":
    main()
