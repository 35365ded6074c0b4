"""Stage-2 training step: this pack's (train_decoder through the shared loop) against the same step written
plainly with diffusers + peft.

    .venv/bin/python benchmarks/train_step.py                 # GPU: batch 1 and 4 at 512 px, LoRA r4, bf16
    .venv/bin/python benchmarks/train_step.py --sdxl          # + SDXL-architecture peak memory at 1024 px
    .venv/bin/python benchmarks/train_step.py --cpu           # CPU: the sandbox model, 2 threads, + peak RSS
    .venv/bin/python benchmarks/train_step.py --tiny          # the tiny model on any device: a smoke run

Both steps do the same work: a denoising loss, a rank-4 LoRA on the UNet's attention projections and the
concept token rows trained with AdamW. The plain step is how diffusers' example scripts write it: every
weight in float32, the image encoded by the VAE every step, the whole embedding table trainable with the
other rows put back after each step. The pack's step keeps frozen weights in bf16 (on a GPU), encodes the
latents once, and trains only the new token rows.

GPU (SD1.5 architecture, random weights, 512 px, bf16 autocast) and --tiny run both sides in one process.
--cpu runs the built-in sandbox model (its 64 px, float32, `--threads` CPU threads) and each side in a
process of its own, so that each side's peak RSS is its own; the plain side loads the model folder with
diffusers' and transformers' own `from_pretrained`.

Printed per batch size: steps/s, images/s and peak memory (GPU: allocated GiB; --cpu: RSS MiB) of each,
and the pack/plain ratios. Timing starts after `--warmup` steps; GPU peak memory is that of the training
steps (reset after the warm-up). `--json FILE` writes the figures (bench_common's format). Without a GPU
(and without --cpu or --tiny) it prints "no GPU" and exits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_common import (  # noqa: E402
    DEFAULT_THREADS,
    add_side_arguments,
    peak_rss_mib,
    print_ratios,
    ratio,
    result,
    run_side,
    sandbox_folder,
    set_cpu_threads,
    write_json,
)

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


def pack_step(base, dataset: Path, batch: int, steps: int, warmup: int, device: torch.device,
              checkpointing: bool = False) -> tuple[float, float]:
    """(steps/s, peak GiB) of train_decoder on `dataset` (frozen weights in bf16 on a GPU, as `clif train` loads
    them)."""
    from clif_core.train.decoder import DecoderConfig, train_decoder
    from clif_core.training.loop import LoopConfig

    precision = "bf16" if device.type == "cuda" else "no"
    clock = Clock(warmup, device)
    config = DecoderConfig(lora_rank=4, preview_steps=0, loop=LoopConfig(
        steps=steps + 1, batch_size=batch, mixed_precision=precision, checkpoint_every=10**9, log_every=0,
        gradient_checkpointing=checkpointing))
    with tempfile.TemporaryDirectory() as run:
        train_decoder(base, dataset, run, config, reporter=Reporter(progress=clock, log=lambda m: None))
    # the last step is followed by the final checkpoint: timing ends one step before
    return clock.rate(steps), peak_gib(device)


def plain_parts(folder: Path, device: torch.device) -> tuple:
    """(unet, vae, tokenizer, text encoder, scheduler config) loaded as diffusers' example scripts load them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    f32 = {"device": device, "dtype": torch.float32}  # the folder may hold half-precision weights
    return (UNet2DConditionModel.from_pretrained(folder / "unet").to(**f32),
            AutoencoderKL.from_pretrained(folder / "vae").to(**f32),
            CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            CLIPTextModel.from_pretrained(folder / "text_encoder").to(**f32),
            DDPMScheduler.load_config(folder / "scheduler"))


def plain_step(parts: tuple, dataset: Path, batch: int, steps: int, warmup: int,
               device: torch.device) -> tuple[float, float]:
    """(steps/s, peak GiB) of the same step written as diffusers' example scripts write it."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from clif_core.augment.dataset import load_dataset

    ds = load_dataset(dataset)
    pixels = torch.stack([ds[i].image for i in range(len(ds))]) * 2 - 1
    unet, vae, tokenizer, encoder, scheduler_config = parts
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
    scheduler = DDPMScheduler.from_config(scheduler_config)
    captions = [ds.records[i].caption.replace("<alice>", "<alice> <alice>_1").replace("<bob>", "<bob> <bob>_1")
                for i in range(len(ds))]
    unet.train()
    encoder.train()
    clock = Clock(warmup, device)
    for step in range(steps + 1):
        idx = [(step * batch + j) % len(ds) for j in range(batch)]
        # bf16 autocast on a GPU, float32 on the CPU (the pack's choice on each)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
    del optimizer
    return result


def parts_of(base) -> tuple:
    return base.unet, base.vae, base.text[0].tokenizer, base.text[0].encoder, base.scheduler.config


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def side_main(args) -> int:
    """One side of the --cpu comparison, in its own process: writes its figures to --side-out."""
    set_cpu_threads(args.threads)
    device, folder = torch.device("cpu"), Path(args.model)
    if args.side == "plain":
        rate, _ = plain_step(plain_parts(folder, device), Path(args.dataset), args.batch, args.steps, args.warmup,
                             device)
    else:
        from clif_core.models.loader import load_base_model

        rate, _ = pack_step(load_base_model(folder, device="cpu", dtype=torch.float32), Path(args.dataset),
                            args.batch, args.steps, args.warmup, device)
    write_json(args.side_out, {"steps_s": rate, "peak_rss_mib": peak_rss_mib()})
    return 0


def native_resolution(folder: Path) -> int:
    """The model folder's image size: UNet sample size × the VAE's downscale factor (read from the configs)."""
    import json

    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def compare(batches: list[int], measure, memory: str) -> tuple[list[dict], dict[str, float]]:
    """Run `measure(side, batch) -> (steps/s, peak)` for both sides per batch; print and return rows and ratios."""
    rows, ratios = [], {}
    print(f"{'batch':>5} {'':>6} {'steps/s':>8} {'images/s':>9} {memory:>12}")
    for batch in batches:
        plain = measure("plain", batch)
        pack = measure("pack", batch)
        for name, (rate, peak) in (("plain", plain), ("pack", pack)):
            print(f"{batch:>5} {name:>6} {rate:8.2f} {rate * batch:9.2f} {peak:12.2f}")
            rows.append({"name": f"{name}, batch {batch}", "steps_s": rate, "images_s": rate * batch, memory: peak})
        ratios[f"pack/plain images/s, batch {batch}"] = ratio(pack[0], plain[0])
        ratios[f"pack/plain {memory}, batch {batch}"] = ratio(pack[1], plain[1])
    print_ratios(ratios)
    return rows, ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--sdxl", action="store_true", help="also SDXL-architecture peak memory at 1024 px, batch 1")
    parser.add_argument("--tiny", action="store_true", help="the tiny model at 64 px on any device (smoke run)")
    parser.add_argument("--cpu", action="store_true", help="the sandbox model on the CPU, each side in its process")
    parser.add_argument("--model", default=None, help="--cpu: a diffusers folder (default: the sandbox model)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="--cpu: CPU threads per side")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    add_side_arguments(parser)
    args = parser.parse_args()
    if args.side:
        return side_main(args)
    batches = [int(b) for b in args.batches.split(",")]
    settings = {"steps": args.steps, "warmup": args.warmup, "batches": batches, "lora_rank": 4}
    if args.cpu:
        folder = Path(args.model) if args.model else sandbox_folder()
        model = Path(args.model).name if args.model else "sandbox"
        resolution = native_resolution(folder)
        print(f"device: cpu, {args.threads} threads per side, {model} model at {resolution} px, float32; "
              f"torch {torch.__version__}")
        with tempfile.TemporaryDirectory() as tmp:
            dataset = make_dataset(Path(tmp) / "ds", resolution, 16)

            def measure(side: str, batch: int) -> tuple[float, float]:
                out = run_side(Path(__file__).resolve(), [
                    "--side", side, "--model", str(folder), "--dataset", str(dataset), "--batch", str(batch),
                    "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)])
                return out["steps_s"], out["peak_rss_mib"]

            rows, ratios = compare(batches, measure, "peak RSS MiB")
        write_json(args.json, result("train_step", f"cpu, {args.threads} threads", {
            **settings, "model": model, "resolution": resolution}, rows, ratios))
        return 0
    if not torch.cuda.is_available() and not args.tiny:
        print("no GPU: this benchmark measures GPU training steps (use --cpu or --tiny on the CPU)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family, resolution = ("tiny", 64) if args.tiny else ("sd1", 512)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "ds", resolution, 16)

        def measure(side: str, batch: int) -> tuple[float, float]:
            if side == "plain":
                figures = plain_step(parts_of(build_base(family, device, torch.float32)), dataset, batch,
                                     args.steps, args.warmup, device)
            else:
                figures = pack_step(build_base(family, device, dtype), dataset, batch, args.steps, args.warmup,
                                    device)
            free(device)
            return figures

        rows, ratios = compare(batches, measure, "peak GiB")
        if args.sdxl and device.type == "cuda":
            big = make_dataset(Path(tmp) / "xl", 1024, 4)
            for checkpointing in (False, True):
                rate, peak = pack_step(build_base("sdxl", device, torch.bfloat16), big, 1, min(args.steps, 10),
                                       args.warmup, device, checkpointing)
                free(device)
                label = f"pack SDXL 1024 px, batch 1, gradient checkpointing {'on' if checkpointing else 'off'}"
                print(f"{label}: {rate:.2f} steps/s, peak {peak:.2f} GiB")
                rows.append({"name": label, "steps_s": rate, "images_s": rate, "peak GiB": peak})
    write_json(args.json, result("train_step", name, {**settings, "family": family, "resolution": resolution},
                                 rows, ratios))
    return 0

if __name__ == "__main__":
    sys.exit(main())
