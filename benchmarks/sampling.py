"""Sampling speed and memory: this pack's sampler vs diffusers' StableDiffusionPipeline vs ComfyUI's KSampler.

    .venv/bin/python benchmarks/sampling.py             # GPU: SD1.5 architecture, random weights, 512 px
    .venv/bin/python benchmarks/sampling.py --smoke     # tiny model on CPU, 2 steps: checks the script still runs
    .venv/bin/python benchmarks/sampling.py --isolation # CPU: concept isolation vs the same files everywhere

Without CUDA (and without --smoke) it prints "no GPU" and exits 0. All paths sample the same random-weight
model (written once as a single-file checkpoint for ComfyUI, which runs in a subprocess on the rig's ComfyUI
0.3.75) with Euler, the same size, steps and guidance, batch 1 (this pack and diffusers in fp16; ComfyUI in
the dtype it picks itself). Reported per path: the denoising loop's UNet iterations per second (each one a CFG pass
over a batch of 2; timed between the first and last step, the GPU synchronised at each step in every path),
seconds per image end to end (text encoding, loop, VAE decoding) and peak allocated GPU memory; then the
ratios, and the cost of regional prompts (two regions, left/right) over plain sampling with this sampler.

`--isolation` (CPU, the tiny SD1 model, 64 px, 10 steps, CFG 7): two regions with two concept files (random LoRAs on
the attention projections and conv1, plus a text LoRA), applied everywhere vs each isolated to its region
(docs/sampling.md, "Concept isolation"); it prints both and the time ratio side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, studio light"
NEGATIVE = "blurry, low quality"


def _sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(run, repeat: int) -> dict:
    """`run(marks)` samples one image, appending `_sync()` at the end of every step. One warm-up run first."""
    run([])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    totals, rates = [], []
    for _ in range(repeat):
        marks: list[float] = []
        start = _sync()
        run(marks)
        totals.append(_sync() - start)
        rates.append((len(marks) - 1) / (marks[-1] - marks[0]))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"it_s": statistics.median(rates), "s_image": statistics.median(totals), "peak_gib": peak}


def clif_runs(base, args, regions=(), concepts=(), prompt=PROMPT):
    from clif_core.progress import Reporter
    from clif_core.sample.config import SampleConfig
    from clif_core.sample.sampler import sample

    config = SampleConfig(prompt, negative_prompt=NEGATIVE, seed=1, steps=args.steps, cfg=args.cfg, scheduler="euler",
                          width=args.size, height=args.size, regions=regions)

    def run(marks):
        sample(base, config, concepts, reporter=Reporter(
            progress=lambda step, total, preview=None: marks.append(_sync()), log=lambda m: None))

    return run


def isolation_main(args) -> None:
    """Regional sampling with two concept files applied everywhere vs isolated to their regions, on CPU."""
    from clif_core.models.tiny import build_tiny_model
    from clif_core.sample.regional import layout_regions
    from clif_core.sample.sampler import ConceptUse
    from tests.test_concept_file import make_concept_file

    torch.set_num_threads(1)
    base = build_tiny_model("sd1", 0)
    files = [make_concept_file(base, seed=i, names=(name,)) for i, name in enumerate(("alice", "bob"))]
    regions = layout_regions("left_right", ["<alice>, a woman", "<bob>, a man"])
    results = {
        "regional, concepts everywhere": measure(clif_runs(
            base, args, regions, [ConceptUse(f) for f in files], "two people"), args.repeat),
        "regional, concepts isolated": measure(clif_runs(
            base, args, regions, [ConceptUse(f, region=i) for i, f in enumerate(files, 1)], "two people"),
            args.repeat),
    }
    print(f"tiny SD1 model on CPU (1 thread), {args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}, euler, "
          f"batch 1, fp32, median of {args.repeat}")
    print(f"{'path':32s} {'it/s':>8s} {'s/image':>9s}")
    for name, r in results.items():
        print(f"{name:32s} {r['it_s']:8.2f} {r['s_image']:9.3f}")
    everywhere, isolated = results.values()
    print(f"isolated / everywhere: time per image x{isolated['s_image'] / everywhere['s_image']:.2f}, "
          f"it/s x{isolated['it_s'] / everywhere['it_s']:.2f}")


def diffusers_runs(base, args):
    from diffusers import StableDiffusionPipeline

    from clif_core.sample.schedulers import make_scheduler

    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer,
                                   unet=base.unet, scheduler=make_scheduler(base.scheduler.config, "euler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run(marks):
        def on_step(pipe, i, t, kwargs):
            marks.append(_sync())
            return kwargs

        with torch.inference_mode():
            pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=args.cfg,
                 height=args.size, width=args.size, generator=torch.Generator().manual_seed(1), output_type="pil",
                 callback_on_step_end=on_step)

    return run


def comfy_measure(checkpoint: Path, latent_side: int, args) -> dict:
    """Run ComfyUI's KSampler on `checkpoint` in a subprocess with the rig's ComfyUI on the path."""
    from tests.comfyui.rig import comfy_subprocess_env

    cmd = [sys.executable, str(Path(__file__).resolve()), "--comfy-worker", str(checkpoint),
           "--latent-side", str(latent_side), "--steps", str(args.steps), "--cfg", str(args.cfg),
           "--repeat", str(args.repeat)] + (["--smoke"] if args.smoke else [])
    done = subprocess.run(cmd, env=comfy_subprocess_env(), capture_output=True, text=True, cwd=REPO)
    lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ComfyUI worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def comfy_worker(args) -> None:
    """Inside ComfyUI's environment: CLIPTextEncode + KSampler (euler, normal) + VAEDecode, as a graph runs them."""
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0]] + (["--cpu"] if args.smoke else [])
    import comfy.sample

    # by path: the repository's `nodes` package would clash with ComfyUI's own `nodes` module
    spec = importlib.util.spec_from_file_location("clif_comfy_models", REPO / "nodes" / "comfy_models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    model, clip, vae = models.load_comfy_checkpoint(args.comfy_worker, None)

    def run(marks):
        with torch.inference_mode():
            positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
            negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE))
            latent = torch.zeros(1, 4, args.latent_side, args.latent_side)
            noise = comfy.sample.prepare_noise(latent, 1)
            samples = comfy.sample.sample(model, noise, args.steps, args.cfg, "euler", "normal", positive, negative,
                                          latent, callback=lambda *a: marks.append(_sync()), disable_pbar=True, seed=1)
            vae.decode(samples)

    print("RESULT " + json.dumps(measure(run, args.repeat)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, 2 steps, 64 px: the script runs")
    parser.add_argument("--isolation", action="store_true",
                        help="CPU, tiny model: concept isolation vs the same concept files everywhere")
    parser.add_argument("--comfy-worker", help=argparse.SUPPRESS)
    parser.add_argument("--latent-side", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.comfy_worker:
        comfy_worker(args)
        return 0
    if args.isolation:
        args.steps, args.size = min(args.steps, 10), 64
        isolation_main(args)
        return 0
    if args.smoke:
        args.steps, args.size, args.repeat = 2, 64, 1
    elif not torch.cuda.is_available():
        print("no GPU: this benchmark needs CUDA (use --smoke to check that the script runs on CPU)")
        return 0

    from clif_core.models.ldm_layout import save_single_file
    from clif_core.sample.regional import layout_regions
    from clif_core.sample.sampler import vae_scale_factor

    if args.smoke:
        from clif_core.models.tiny import build_tiny_model

        base, what = build_tiny_model("sd1", 0), "tiny SD1 model (smoke run)"
    else:
        from clif_core.models.random_model import build_published_architecture

        base = build_published_architecture("sd1", seed=0, device="cuda", dtype=torch.float16)
        what = f"SD1.5 architecture (random weights) on {torch.cuda.get_device_name()}"
    results = {
        "clif sampler": measure(clif_runs(base, args), args.repeat),
        "clif regional (2 regions)": measure(
            clif_runs(base, args, layout_regions("left_right", ["an astronaut", "a horse"])), args.repeat),
        "diffusers pipeline": measure(diffusers_runs(base, args), args.repeat),
    }
    latent_side = args.size // vae_scale_factor(base.vae)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_single_file(base, Path(tmp) / "sd15_random.safetensors")
        del base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        results["comfyui ksampler"] = comfy_measure(checkpoint, latent_side, args)

    print(f"{what}, {args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}, euler, batch 1, "
          f"{'fp16' if torch.cuda.is_available() and not args.smoke else 'fp32'}, median of {args.repeat}")
    print(f"{'path':28s} {'it/s':>8s} {'s/image':>9s} {'peak GiB':>9s}")
    for name, r in results.items():
        print(f"{name:28s} {r['it_s']:8.2f} {r['s_image']:9.3f} {r['peak_gib']:9.2f}")
    clif = results["clif sampler"]
    for other in ("diffusers pipeline", "comfyui ksampler"):
        ratio = {key: clif[key] / results[other][key] for key in ("it_s", "s_image", "peak_gib")}
        print(f"clif / {other}: it/s x{ratio['it_s']:.2f}, time per image x{ratio['s_image']:.2f}, "
              f"peak memory x{ratio['peak_gib']:.2f}")
    regional = results["clif regional (2 regions)"]
    print(f"regional / plain time per image: x{regional['s_image'] / clif['s_image']:.2f} (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
