"""Erasure on one GPU: All-but-One and ESD side by side on an SD1.5-architecture model with random weights.

    python benchmarks/erase.py                 # the defaults a user gets: 512 px, 400 steps, batch 2
    python benchmarks/erase.py --steps 200 --runs all-but-one:lora esd-x:auto

For each run: time to sample the x_t pool, training steps/s, the whole time to erase one concept (pool,
training, patch, measurements, thumbnail) and the peak GPU memory, plus the drift measurements of
clif_core.erase.metrics (random weights: their values show the mechanics, not image quality).
Prints "no GPU" and exits without CUDA. Goal (issue 5): one concept in under 2 minutes on one H100.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_RUNS = ["all-but-one:auto", "esd-x:auto", "esd:lora", "all-but-one:xattn"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="method:params pairs")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no GPU")
        return 0
    from clif_core.erase.config import EraseConfig, EraseTarget
    from clif_core.erase.trainer import erase_concepts
    from clif_core.models.random_model import build_published_architecture
    from clif_core.progress import Reporter
    from clif_core.train.loop import LoopConfig

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    base = build_published_architecture(args.family, seed=0, device="cuda", dtype=torch.bfloat16)
    print(f"{torch.cuda.get_device_name()}, {args.family} random weights in bf16 (trained weights fp32 under bf16 "
          f"autocast), {args.steps} steps × batch {args.batch_size}, pool {args.trajectories} × "
          f"{args.sample_steps} DDIM steps, one concept with an alternative")
    rows = []
    for spec in args.runs:
        method, params = spec.split(":")
        config = EraseConfig(
            targets=[EraseTarget("a photo of a pig", "a photo of a cow")], method=method, params=params,
            trajectories=args.trajectories, sample_steps=args.sample_steps,
            loop=LoopConfig(steps=args.steps, batch_size=args.batch_size, checkpoint_every=args.steps,
                            preview_every=0, log_every=0))
        pool_units = args.trajectories * args.sample_steps
        marks: dict[str, float] = {}

        def progress(step, total, preview=None, marks=marks, pool_units=pool_units):
            if step >= pool_units and "pool" not in marks:
                torch.cuda.synchronize()
                marks["pool"] = time.perf_counter()
            if step >= total:
                torch.cuda.synchronize()
                marks["train"] = time.perf_counter()

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = erase_concepts(base, config, Path(tmp) / "run", Path(tmp) / "patch.safetensors",
                                    reporter=Reporter(progress=progress, log=lambda m: None))
            torch.cuda.synchronize()
            end = time.perf_counter()
            size = (Path(tmp) / "patch.safetensors").stat().st_size
        rows.append({
            "run": f"{method} ({config.subset})",
            "pool s": marks["pool"] - start,
            "steps/s": args.steps / (marks["train"] - marks["pool"]),
            "erase s": end - start,
            "peak GiB": torch.cuda.max_memory_allocated() / 2**30,
            "patch MiB": size / 2**20,
            "uncond drift": result.metrics["uncond_drift"],
            "guidance→goal": result.metrics["guidance_to_goal"],
            "target shift": result.metrics["target_shift"],
            "svd err": result.metrics["patch_max_relative_error"],
        })
        print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
              flush=True)
    keys = list(rows[0])
    width = max(len(r["run"]) for r in rows)
    print()
    print(f"{'':{width}}  " + "  ".join(f"{k:>13}" for k in keys[1:]))
    for r in rows:
        print(f"{r['run']:{width}}  " + "  ".join(f"{r[k]:>13.4g}" for k in keys[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
