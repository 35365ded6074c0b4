"""Erasure: All-but-One and ESD side by side, and against a plain diffusers ESD step.

    python benchmarks/erase.py                 # GPU: SD1.5 architecture, random weights, 512 px, 400 steps, batch 2
    python benchmarks/erase.py --steps 200 --runs all-but-one:lora esd-x:auto
    python benchmarks/erase.py --cpu           # CPU: the sandbox model, 2 threads, `clif bench erase`'s smoke budget
    python benchmarks/erase.py --tiny --steps 2 --batch-size 1 --trajectories 1 --sample-steps 2   # smoke run

For each of the pack's runs: time to sample the x_t pool, training steps/s, the whole time to erase one
concept (pool, training, patch, measurements, thumbnail), peak GPU memory (GPU only) and the drift
measurements of clif_core.erase.metrics (random weights: their values show the mechanics, not image
quality). Then the plain step, ESD-x as the ESD authors' diffusers code writes it: a frozen copy of the
UNet, and every step a fresh x_t sampled from noise with the model being trained (DDIM, CFG, to a random
one of the `--sample-steps` steps), the frozen model's ε(x_t, ∅) and ε(x_t, c), and the cross-attention
weights trained with Adam. Its time per concept is `--plain-steps` measured steps scaled to the same budget
(steps × batch); the printed ratios are the plain time per concept over each of the pack's runs.
`--json FILE` writes the figures (bench_common's format). Without CUDA (and without --cpu or --tiny) it
prints "no GPU" and exits. Goal (issue 5): one concept in under 2 minutes on one H100.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_common import DEFAULT_THREADS, print_ratios, ratio, result, sandbox_folder, set_cpu_threads, write_json  # noqa: E402

DEFAULT_RUNS = ["all-but-one:auto", "esd-x:auto", "esd:lora", "all-but-one:xattn"]
CPU_RUNS = ["all-but-one:auto", "esd-x:auto"]
TARGET, ALTERNATIVE = "a photo of a pig", "a photo of a cow"


def synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def pack_run(base: Any, spec: str, args, device: torch.device) -> dict[str, Any]:
    """One erase_concepts run of `spec` ("method:params") at the benchmark's budget; its figures."""
    from clif_core.erase.config import EraseConfig, EraseTarget
    from clif_core.erase.trainer import erase_concepts
    from clif_core.progress import Reporter
    from clif_core.training.loop import LoopConfig

    method, params = spec.split(":")
    config = EraseConfig(
        targets=[EraseTarget(TARGET, ALTERNATIVE)], method=method, params=params,
        trajectories=args.trajectories, sample_steps=args.sample_steps,
        loop=LoopConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.steps,
                        preview_every=0, log_every=0))
    pool_units = args.trajectories * args.sample_steps
    marks: dict[str, float] = {}

    def progress(step, total, preview=None):
        if step >= pool_units and "pool" not in marks:
            marks["pool"] = synced(device)
        if step >= total:
            marks["train"] = synced(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = synced(device)
        done = erase_concepts(base, config, Path(tmp) / "run", Path(tmp) / "patch.safetensors",
                              reporter=Reporter(progress=progress, log=lambda m: None))
        end = synced(device)
        size = (Path(tmp) / "patch.safetensors").stat().st_size
    return {
        "name": f"{method} ({config.subset})",
        "pool s": marks["pool"] - start,
        "steps/s": args.steps / (marks["train"] - marks["pool"]),
        "erase s": end - start,
        "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        "patch MiB": size / 2**20,
        "uncond drift": done.metrics["uncond_drift"],
        "guidance→goal": done.metrics["guidance_to_goal"],
        "target shift": done.metrics["target_shift"],
        "svd err": done.metrics["patch_max_relative_error"],
    }


def plain_esd(parts: tuple, args, device: torch.device, autocast: Callable[[], Any]) -> dict[str, Any]:
    """ESD-x written plainly with diffusers (see the module docstring); time per concept at the budget."""
    from diffusers import DDIMScheduler

    from clif_core.erase.config import EraseConfig

    unet, vae, tokenizer, encoder, scheduler_config = parts
    defaults = EraseConfig(targets=[])
    frozen = copy.deepcopy(unet).requires_grad_(False)
    unet.requires_grad_(False)
    params = [p for n, p in unet.named_parameters() if "attn2" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-5)
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(args.sample_steps)
    with torch.no_grad():
        ids = tokenizer(["", TARGET], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        null, target = encoder(ids)[0].to(unet.dtype).chunk(2)
    side = unet.config.sample_size
    batch = args.batch_size
    null_b, target_b = null.expand(batch, -1, -1), target.expand(batch, -1, -1)
    unet.train()
    times = []
    for _ in range(args.plain_steps + 1):
        start = synced(device)
        stop = int(torch.randint(0, args.sample_steps, ()))
        x = torch.randn(batch, unet.config.in_channels, side, side, device=device) * scheduler.init_noise_sigma
        with torch.no_grad(), autocast():
            for t in scheduler.timesteps[:stop]:  # x_t from the model being trained, as ESD's code samples it
                uncond, cond = unet(torch.cat([x, x]), t, torch.cat([null_b, target_b])).sample.float().chunk(2)
                x = scheduler.step(uncond + defaults.guidance_scale * (cond - uncond), t, x).prev_sample
            t = scheduler.timesteps[stop]
            e_null = frozen(x, t, null_b).sample.float()
            e_target = frozen(x, t, target_b).sample.float()
        with autocast():
            pred = unet(x, t, target_b).sample.float()
        loss = F.mse_loss(pred, e_null - defaults.eta * (e_target - e_null))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # ESD's code logs the loss every step
        times.append(synced(device) - start)
    per_step = sum(times[1:]) / len(times[1:])  # the first step warms up
    del frozen, optimizer
    return {"name": "plain diffusers ESD-x", "steps/s": 1 / per_step, "erase s": per_step * args.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--steps", type=int, default=None, help="default: 400 on a GPU, 40 with --cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=None, help="default: 4 on a GPU, 2 with --cpu")
    parser.add_argument("--sample-steps", type=int, default=None, help="default: 50 on a GPU, 10 with --cpu")
    parser.add_argument("--plain-steps", type=int, default=10, help="measured steps of the plain ESD step")
    parser.add_argument("--runs", nargs="+", default=None, help="method:params pairs")
    parser.add_argument("--cpu", action="store_true", help="the sandbox model on the CPU")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (smoke run)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="--cpu/--tiny: CPU threads")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    cpu = args.cpu or args.tiny
    # the GPU defaults are the pack's own; the CPU ones `clif bench erase`'s smoke budget
    args.steps = args.steps or (40 if cpu else 400)
    args.trajectories = args.trajectories or (2 if cpu else 4)
    args.sample_steps = args.sample_steps or (10 if cpu else 50)
    runs = args.runs or (CPU_RUNS if cpu else DEFAULT_RUNS)
    if not cpu and not torch.cuda.is_available():
        print("no GPU (use --cpu on the CPU)")
        return 0
    from train_step import parts_of, plain_parts

    if cpu:
        set_cpu_threads(args.threads)
        device = torch.device("cpu")
        if args.tiny:
            from clif_core.models.tiny import build_tiny_model

            what, base = "tiny SD1 model (smoke run)", build_tiny_model("sd1", 0)
            make_plain = lambda: parts_of(build_tiny_model("sd1", 0))  # noqa: E731
        else:
            from clif_core.models.loader import load_base_model

            folder = sandbox_folder()
            what, base = "sandbox model", load_base_model(folder, device="cpu", dtype=torch.float32)
            make_plain = lambda: plain_parts(folder, device)  # noqa: E731
        device_name = f"cpu, {args.threads} threads"
        autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
        what += " in float32"
    else:
        from clif_core.models.random_model import build_published_architecture

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device, device_name = torch.device("cuda"), torch.cuda.get_device_name()
        base = build_published_architecture(args.family, seed=0, device="cuda", dtype=torch.bfloat16)
        make_plain = lambda: parts_of(build_published_architecture(args.family, seed=1, device="cuda"))  # noqa: E731
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        what = (f"{args.family} random weights in bf16 (trained weights fp32 under bf16 autocast; the plain step's "
                "UNet in fp32 under bf16 autocast)")
    print(f"{device_name}, {what}, {args.steps} steps × batch {args.batch_size}, pool {args.trajectories} × "
          f"{args.sample_steps} DDIM steps, one concept with an alternative")
    rows = []
    for spec in runs:
        rows.append(pack_run(base, spec, args, device))
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
              flush=True)
    del base
    plain = []
    if args.family != "sdxl":  # the plain step is written for SD1/SD2's UNet call (no added conditions)
        plain.append(plain_esd(make_plain(), args, device, autocast))
        print(f"{plain[0]['name']}: {plain[0]['steps/s']:.4g} steps/s, {plain[0]['erase s']:.4g} s per concept "
              f"({args.plain_steps} steps measured)")
    keys = list(rows[0])
    width = max(len(r["name"]) for r in rows + plain)
    print()
    print(f"{'':{width}}  " + "  ".join(f"{k:>13}" for k in keys[1:]))
    for r in rows + plain:
        print(f"{r['name']:{width}}  " + "  ".join(f"{r.get(k, float('nan')):>13.4g}" for k in keys[1:]))
    ratios = {f"plain ESD-x / {r['name']}: time per concept": ratio(p["erase s"], r["erase s"])
              for p in plain for r in rows}
    print_ratios(ratios)
    write_json(args.json, result("erase", device_name, {
        "what": what, "steps": args.steps, "batch_size": args.batch_size, "trajectories": args.trajectories,
        "sample_steps": args.sample_steps, "plain_steps": args.plain_steps, "runs": runs}, rows + plain, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
