"""Stage-2 training step: this pack's (train_decoder through the shared loop) against the same step written
plainly with diffusers + peft, on an SD1.5-architecture model with random weights, in one process.

    .venv/bin/python benchmarks/train_step.py                 # GPU: batch 1 and 4 at 512 px, LoRA r4, bf16
    .venv/bin/python benchmarks/train_step.py --sdxl          # + SDXL-architecture peak memory at 1024 px
    .venv/bin/python benchmarks/train_step.py --tiny          # the tiny model on any device: a smoke run

Both steps do the same work: a denoising loss at 512 px under bf16 autocast, a rank-4 LoRA on the UNet's
attention projections and the concept token rows trained with AdamW. The plain step is how diffusers'
example scripts write it: every weight in float32, the image encoded by the VAE every step, the whole
embedding table trainable with the other rows put back after each step. The pack's step keeps frozen
weights in bf16, encodes the latents once, and trains only the new token rows.

Printed per batch size: steps/s, images/s and peak GPU memory of each, and pack/plain ratios. Timing
starts after `--warmup` steps; peak memory is that of the training steps (reset after the warm-up).
Without a GPU it prints "no GPU" and exits (use --tiny to exercise the code anyway).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clif_core.augment.compose import AugmentConfig  # noqa: E402
from clif_core.augment.dataset import build_dataset  # noqa: E402
from clif_core.augment.fallback import FallbackSegmenter  # noqa: E402
from clif_core.concepts.spec import Concept  # noqa: E402
from clif_core.progress import Reporter  # noqa: E402

CONCEPTS = (("alice", "<alice>", "woman", (200, 40, 40)), ("bob", "<bob>", "man", (40, 160, 60)))


def figure(size: int, colour, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 250, 3)))
    d = ImageDraw.Draw(img)
    s = size / 100
    d.ellipse((35 * s, 8 * s, 65 * s, 38 * s), fill=colour)
    d.rectangle((28 * s, 38 * s, 72 * s, 92 * s), fill=tuple(255 - c for c in colour))
    return img


def make_dataset(folder: Path, resolution: int, samples: int) -> Path:
    concepts = [Concept(name, token, word, [figure(resolution, colour, i) for i in range(2)])
                for name, token, word, colour in CONCEPTS]
    config = AugmentConfig(resolution=resolution, n_global=0, n_region=0, n_mix=samples - samples // 4,
                           n_single=samples // 4, seed=0)
    return build_dataset(concepts, folder, config, FallbackSegmenter())


def build_base(family: str, device: torch.device, dtype: torch.dtype):
    if family == "tiny":
        from clif_core.models.tiny import build_tiny_model

        base = build_tiny_model("sd1")
        if (device.type, dtype) != ("cpu", torch.float32):
            for module in (base.unet, base.vae, base.text[0].encoder):
                module.to(device=device, dtype=dtype)
            base.device, base.dtype = device, dtype
        return base
    from clif_core.models.random_model import build_published_architecture

    return build_published_architecture(family, device=device, dtype=dtype)


class Clock:
    """Progress callback: times the steps after the warm-up and resets the memory peak there."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.stamps = warmup, device, {}

    def __call__(self, step: int, total: int, preview=None) -> None:
        if step == self.warmup and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.stamps[step] = time.perf_counter()

    def rate(self, last: int) -> float:
        return (last - self.warmup) / (self.stamps[last] - self.stamps[self.warmup])


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def pack_step(family: str, dataset: Path, batch: int, steps: int, warmup: int, device: torch.device,
              checkpointing: bool = False) -> tuple[float, float]:
    """(steps/s, peak GiB) of train_decoder on `dataset` (frozen weights in bf16, as `clif train` loads them)."""
    from clif_core.train.decoder import DecoderConfig, train_decoder
    from clif_core.train.loop import LoopConfig

    precision = "bf16" if device.type == "cuda" else "no"
    base = build_base(family, device, torch.bfloat16 if precision == "bf16" else torch.float32)
    clock = Clock(warmup, device)
    config = DecoderConfig(lora_rank=4, preview_steps=0, loop=LoopConfig(
        steps=steps + 1, batch_size=batch, mixed_precision=precision, checkpoint_every=10**9, log_every=0,
        gradient_checkpointing=checkpointing))
    with tempfile.TemporaryDirectory() as run:
        train_decoder(base, dataset, run, config, reporter=Reporter(progress=clock, log=lambda m: None))
    # the last step is followed by the final checkpoint: timing ends one step before
    result = clock.rate(steps), peak_gib(device)
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def plain_step(dataset: Path, batch: int, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(steps/s, peak GiB) of the same step written as diffusers' example scripts write it."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from clif_core.augment.dataset import load_dataset

    ds = load_dataset(dataset)
    pixels = torch.stack([ds[i].image for i in range(len(ds))]) * 2 - 1
    family = "tiny" if pixels.shape[-1] <= 64 else "sd1"
    base = build_base(family, device, torch.float32)
    unet, vae, slot = base.unet, base.vae, base.text[0]
    tokenizer, encoder = slot.tokenizer, slot.encoder
    new_tokens = [t for _, token, _, _ in CONCEPTS for t in (token, f"{token}_1")]
    tokenizer.add_tokens(new_tokens)
    encoder.resize_token_embeddings(len(tokenizer))
    new_ids = tokenizer.convert_tokens_to_ids(new_tokens)
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[new_ids] = False
    table = encoder.get_input_embeddings().weight
    original = table.detach().clone()
    table.requires_grad_(True)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    lora = [p for n, p in unet.named_parameters() if "lora" in n]
    optimizer = torch.optim.AdamW([{"params": lora, "lr": 2e-4}, {"params": [table], "lr": 5e-5}])
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    captions = [ds.records[i].caption.replace("<alice>", "<alice> <alice>_1").replace("<bob>", "<bob> <bob>_1")
                for i in range(len(ds))]
    unet.train()
    encoder.train()
    clock = Clock(warmup, device)
    for step in range(steps + 1):
        idx = [(step * batch + j) % len(ds) for j in range(batch)]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                latents = vae.encode(pixels[idx].to(device)).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            ids = tokenizer([captions[i] for i in idx], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(device)
            context = encoder(ids)[0]
            pred = unet(noisy, t, context).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora + [table], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            table[keep] = original[keep]
        loss.item()  # the scripts log the loss every step, as the pack's loop does
        clock(step, steps + 1)
    result = clock.rate(steps), peak_gib(device)
    del base, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--sdxl", action="store_true", help="also SDXL-architecture peak memory at 1024 px, batch 1")
    parser.add_argument("--tiny", action="store_true", help="the tiny model at 64 px on any device (smoke run)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        print("no GPU: this benchmark measures GPU training steps (use --tiny for a CPU smoke run)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family, resolution = ("tiny", 64) if args.tiny else ("sd1", 512)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "ds", resolution, 16)
        print(f"{'batch':>5} {'':>6} {'steps/s':>8} {'images/s':>9} {'peak GiB':>9}")
        for batch in [int(b) for b in args.batches.split(",")]:
            plain = plain_step(dataset, batch, args.steps, args.warmup, device)
            pack = pack_step(family, dataset, batch, args.steps, args.warmup, device)
            for name, (rate, peak) in (("plain", plain), ("pack", pack)):
                print(f"{batch:>5} {name:>6} {rate:8.2f} {rate * batch:9.2f} {peak:9.2f}")
            print(f"{batch:>5} {'ratio':>6} {pack[0] / plain[0]:8.2f} {pack[0] / plain[0]:9.2f} "
                  f"{pack[1] / plain[1] if plain[1] == plain[1] else float('nan'):9.2f}")
        if args.sdxl and device.type == "cuda":
            big = make_dataset(Path(tmp) / "xl", 1024, 4)
            for checkpointing in (False, True):
                rate, peak = pack_step("sdxl", big, 1, min(args.steps, 10), args.warmup, device, checkpointing)
                print(f"SDXL 1024 px batch 1, gradient checkpointing {'on' if checkpointing else 'off'}: "
                      f"{rate:.2f} steps/s, peak {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
