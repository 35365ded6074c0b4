"""Training and evaluating the oracle on renders (free, exact ground truth).

Training images are rendered once from fixed seeds and reused with fresh augmentations every epoch, so a
generated image's small flaws do not fool the oracle: another background (plain or gradient, any pale
colour) behind the objects, brightness/contrast/colour jitter, Gaussian blur and noise. Held-out accuracy
is measured per head on renders from a seed range training never touches.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clif_core.progress import SILENT, Reporter
from clif_core.sandbox.attributes import SLOTS
from clif_core.sandbox.oracle import Oracle, OracleArch, OracleNet, split_logits
from clif_core.sandbox.oracle_heads import HEADS, scene_targets
from clif_core.sandbox.scene import Scene
from clif_core.sandbox.world import WorldConfig, render

# Disjoint seed ranges: training renders, held-out evaluation renders (tests draw from a third range).
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 2_000_000_000

# The oracle sees more figures than the default world so the rarer figure heads get enough examples.
ORACLE_WORLD = WorldConfig(p_figure=0.55, p_detail=0.6)


@dataclass(frozen=True)
class OracleTrainConfig:
    n_train: int = 30_000
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    workers: int = 2
    n_eval: int = 2_000
    arch: OracleArch = OracleArch()
    augment: bool = True
    max_minutes: Optional[float] = None  # stop early (cosine schedule stays as planned) when time runs out


@dataclass
class RenderedSet:
    images: torch.Tensor  # uint8 [N, 3, 64, 64]
    union: torch.Tensor  # bool [N, 64, 64]: any object
    targets: torch.Tensor  # int64 [N, slots, heads], -1 where a head does not apply
    scenes: list[Scene]


def _render_range(args: tuple[int, int, WorldConfig]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Scene]]:
    start, count, cfg = args
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    union = np.empty((count, 64, 64), dtype=bool)
    targets = np.empty((count, len(SLOTS), len(HEADS)), dtype=np.int16)
    scenes = []
    for i in range(count):
        r = render(start + i, cfg)
        images[i], union[i], targets[i] = r.image, r.masks.any(axis=0), scene_targets(r.scene)
        scenes.append(r.scene)
    return images, union, targets, scenes


def render_set(start: int, count: int, cfg: WorldConfig = WorldConfig(), workers: int = 1) -> RenderedSet:
    """Render seeds start..start+count-1 (in parallel processes when `workers` > 1; same result)."""
    chunk = 1000
    jobs = [(s, min(chunk, start + count - s), cfg) for s in range(start, start + count, chunk)]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(_render_range, jobs))
    else:
        parts = [_render_range(j) for j in jobs]
    images, union, targets = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return RenderedSet(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(union),
        torch.from_numpy(targets.astype(np.int64)),
        [scene for p in parts for scene in p[3]],
    )


# ------------------------------------------------------------------------------------------ augmentation


def _gaussian_kernels(sigma: torch.Tensor, size: int = 5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)  # [B, size]


def augment(images: torch.Tensor, union: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 [B, 3, 64, 64] → float 0..1 with background swap, colour jitter, blur and noise (each p=0.5)."""
    b = images.shape[0]
    x = images.float() / 255.0

    def coin(p: float = 0.5) -> torch.Tensor:
        return (torch.rand(b, generator=gen) < p).view(b, 1, 1, 1)

    def rand(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=gen)

    # Another background: pale colours (a random colour pulled toward light gray), plain or a gradient.
    keep = F.max_pool2d(union[:, None].float(), 3, 1, 1) > 0  # objects and their anti-aliased rim
    c1 = torch.lerp(torch.rand(b, 3, generator=gen), torch.full((b, 3), 0.85), rand(0.3, 0.8, 1))
    c2 = torch.lerp(torch.rand(b, 3, generator=gen), torch.full((b, 3), 0.85), rand(0.3, 0.8, 1))
    ramp = torch.linspace(0, 1, 64)
    vertical = coin().view(b, 1, 1).float()
    t = vertical * ramp.view(1, 64, 1) + (1 - vertical) * ramp.view(1, 1, 64)  # [B, 64, 64]
    t = t * coin().view(b, 1, 1).float()  # half the swaps are plain
    bg = c1[:, :, None, None] + (c2 - c1)[:, :, None, None] * t[:, None]
    x = torch.where(coin() & ~keep, bg, x)

    # Brightness, contrast and per-channel colour jitter.
    jitter = coin()
    contrast, bright, tint = rand(0.85, 1.15, 1, 1, 1), rand(-0.07, 0.07, 1, 1, 1), rand(-0.03, 0.03, 3, 1, 1)
    x = torch.where(jitter, (x - 0.5) * contrast + 0.5 + bright + tint, x)

    # Gaussian blur with a per-image sigma (separable, one grouped convolution per direction).
    sigma = rand(0.3, 1.1)
    k = _gaussian_kernels(sigma).repeat_interleave(3, dim=0)  # [B*3, 5]
    flat = x.reshape(1, b * 3, 64, 64)
    blurred = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), k.view(b * 3, 1, 1, 5), groups=b * 3)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), k.view(b * 3, 1, 5, 1), groups=b * 3)
    x = torch.where(coin(), blurred.reshape(b, 3, 64, 64), x)

    noise = torch.randn(x.shape, generator=gen) * rand(0.0, 0.06, 1, 1, 1)
    x = torch.where(coin(), x + noise, x)
    return x.clamp(0.0, 1.0)


# ------------------------------------------------------------------------------------------------ training


def oracle_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over heads of the cross-entropy over the slots where each head applies."""
    losses = []
    for h, head_logits in enumerate(split_logits(logits)):
        t = targets[:, :, h]
        if (t >= 0).any():
            losses.append(F.cross_entropy(head_logits.reshape(-1, head_logits.shape[-1]), t.reshape(-1), ignore_index=-1))
    return torch.stack(losses).mean()


def train_oracle(cfg: OracleTrainConfig = OracleTrainConfig(), reporter: Reporter = SILENT) -> tuple[Oracle, dict]:
    """Render the training set, train, and evaluate on held-out renders. Returns the oracle and a report."""
    started = time.time()
    torch.manual_seed(cfg.seed)
    reporter.log(f"rendering {cfg.n_train} training scenes ...")
    data = render_set(TRAIN_SEED_BASE + cfg.seed * 10_000_000, cfg.n_train, ORACLE_WORLD, cfg.workers)
    render_seconds = time.time() - started

    net = OracleNet(cfg.arch).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = cfg.n_train // cfg.batch_size
    total = steps_per_epoch * cfg.epochs

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))

    gen = torch.Generator().manual_seed(cfg.seed)
    net.train()
    step, losses, stopped_early = 0, [], False
    deadline = started + cfg.max_minutes * 60 if cfg.max_minutes else None
    for _epoch in range(cfg.epochs):
        order = torch.randperm(cfg.n_train, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if cfg.augment:
                x = augment(data.images[idx], data.union[idx], gen)
            else:
                x = data.images[idx].float() / 255.0
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = oracle_loss(net(x.contiguous(memory_format=torch.channels_last)), data.targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            reporter.progress(step, total, None)
            reporter.check_cancel()
            if step % 200 == 0:
                reporter.log(f"step {step}/{total} loss {np.mean(losses[-200:]):.4f}")
            if deadline and time.time() > deadline:
                stopped_early = True
                break
        if stopped_early:
            break
    train_seconds = time.time() - started - render_seconds

    oracle = Oracle(net.eval(), cfg.arch)
    held_out = evaluate(oracle, EVAL_SEED_BASE, cfg.n_eval, WorldConfig(), workers=cfg.workers)
    held_out_aug = evaluate(oracle, EVAL_SEED_BASE, cfg.n_eval, WorldConfig(), workers=cfg.workers, augmented=True)
    report = {
        "config": {**asdict(cfg), "arch": asdict(cfg.arch)},
        "steps": step,
        "stopped_early": stopped_early,
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "held_out": held_out,
        "held_out_augmented": held_out_aug,
    }
    return oracle, report


@torch.no_grad()
def evaluate(
    oracle: Oracle,
    start: int = EVAL_SEED_BASE,
    count: int = 2_000,
    cfg: WorldConfig = WorldConfig(),
    workers: int = 1,
    augmented: bool = False,
    data: Optional[RenderedSet] = None,
) -> dict:
    """Per-head accuracy (over the slots where the head applies) and whole-scene exactness on fresh renders."""
    data = data or render_set(start, count, cfg, workers)
    if augmented:
        x = augment(data.images, data.union, torch.Generator().manual_seed(start % (2**31)))
    else:
        x = data.images.float() / 255.0
    logits = oracle.logits(x)
    heads = split_logits(logits)
    out: dict[str, dict] = {}
    all_right = torch.ones(len(x), dtype=torch.bool)
    for h, (head, head_logits) in enumerate(zip(HEADS, heads)):
        t = data.targets[:, :, h]
        valid = t >= 0
        right = head_logits.argmax(dim=-1) == t
        all_right &= (right | ~valid).all(dim=1)
        n = int(valid.sum())
        out[head.name] = {"accuracy": round(float(right[valid].float().mean()) if n else float("nan"), 4), "n": n}
    return {"images": len(x), "scene_exact": round(float(all_right.float().mean()), 4), "heads": out}


def min_head_accuracy(result: dict, heads: Optional[Sequence[str]] = None) -> tuple[str, float]:
    """The worst head in an `evaluate` result (name, accuracy)."""
    items = [(k, v["accuracy"]) for k, v in result["heads"].items() if heads is None or k in heads]
    return min(items, key=lambda kv: kv[1])
