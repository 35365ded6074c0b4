"""Sampling speed and memory: this pack's sampler vs diffusers' StableDiffusionPipeline vs ComfyUI's KSampler.

    .venv/bin/python benchmarks/sampling.py             # GPU: SD1.5 architecture, random weights, 512 px
    .venv/bin/python benchmarks/sampling.py --cpu       # CPU: the sandbox model, 2 threads, concepts vs none
    .venv/bin/python benchmarks/sampling.py --smoke     # tiny model on CPU, 2 steps: checks the script still runs
    .venv/bin/python benchmarks/sampling.py --isolation # CPU: concept isolation vs the same files everywhere

How runs are timed: each path's first run is timed on its own ("first s": a new graph, or a new concept file,
pays its one-off costs there), then it runs `--repeat` times and the medians are reported. This pack's sampler
paths (plain, regional, with concepts) take turns run by run: on a shared CPU the load drifts over minutes, and
taking turns gives them the same load, so their ratios hold. diffusers' and ComfyUI's paths are measured one
after the other (ComfyUI's in its own process), so their ratios to this sampler are only as good as the
machine is quiet. This pack's sampler runs as the CLIF Sampler node does when a graph is queued again: a new seed
each run and new ConceptUse objects (file fingerprints taken every run). With --cpu, each concept path's
first run is also printed against its plain path's median ("first run" ratios).

Without CUDA (and without --cpu or --smoke) it prints "no GPU" and exits 0. `--json FILE` writes the figures
(bench_common's format). All paths sample the same random-weight
model (written once as a single-file checkpoint for ComfyUI, which runs in a subprocess on the rig's ComfyUI
0.3.75) with Euler, the same size, steps and guidance, batch 1 (this pack and diffusers in fp16; ComfyUI in
the dtype it picks itself). Reported per path: the denoising loop's UNet iterations per second (each one a CFG pass
over a batch of 2; timed between the first and last step, the GPU synchronised at each step in every path),
seconds per image end to end (text encoding, loop, VAE decoding) and peak allocated GPU memory; then the
ratios, and the cost of regional prompts (two regions, left/right) over plain sampling with this sampler.

`--cpu` (the built-in sandbox model at its 64 px, float32, `--threads` threads, default 20 steps): the same paths
plus each with a concept file applied (random LoRA on the attention projections and conv1, a text LoRA and
the concept tokens): CLIF Sampler with the file, and the native path (Apply Concepts' code on ComfyUI's MODEL
and CLIP, then the stock KSampler); the diffusers side loads the folder with `from_pretrained`. Printed: the
ratios of the sampler to diffusers and to ComfyUI's KSampler, and of concepts applied to none on each path.
`--smoke` runs the --cpu paths on the tiny model, 2 steps.

`--isolation` (CPU, the tiny SD1 model, 64 px, 10 steps, CFG 7): two regions with two concept files (random LoRAs on
the attention projections and conv1, plus a text LoRA), applied everywhere vs each isolated to its region
(docs/sampling.md, "Concept isolation"); it prints both and the time ratio side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import DEFAULT_THREADS, REPO, print_ratios, ratio, result, sandbox_folder, set_cpu_threads, write_json  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on the moon, detailed, studio light"
NEGATIVE = "blurry, low quality"


def _sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def measure(run, repeat: int) -> dict:
    """`run(marks)` samples one image, appending `_sync()` at the end of every step. One first run, timed
    (`first_s`: what a new graph, or a new concept file, costs once) but not in the medians."""
    return measure_interleaved({"run": run}, repeat)["run"]


def measure_interleaved(runs: dict, repeat: int) -> dict[str, dict]:
    """`measure` for several paths at once, taking turns: each path's first run, then `repeat` rounds of one run
    per path. On a shared CPU the load changes over minutes; taking turns exposes every path to the same load,
    so their ratios hold where the absolute times do not. Peak GPU memory is each path's own, over its rounds."""
    first = {}
    for name, run in runs.items():
        start = _sync()
        run([])
        first[name] = _sync() - start
    totals: dict[str, list[float]] = {name: [] for name in runs}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    cuda = torch.cuda.is_available()
    peaks = {name: 0.0 if cuda else float("nan") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            marks: list[float] = []
            start = _sync()
            run(marks)
            totals[name].append(_sync() - start)
            rates[name].append((len(marks) - 1) / (marks[-1] - marks[0]))
            if cuda:
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**30)
    return {name: {"it_s": statistics.median(rates[name]), "s_image": statistics.median(totals[name]),
                   "first_s": first[name], "peak_gib": peaks[name]} for name in runs}


def clif_runs(base, args, regions=(), concepts=(), prompt=PROMPT):
    """This pack's sampler as the CLIF Sampler node runs it when a graph is queued again: a new seed each run,
    and new ConceptUse objects (the node makes them per run, so the files' fingerprints are taken every run)."""
    from clif_core.progress import Reporter
    from clif_core.sample.config import SampleConfig
    from clif_core.sample.sampler import ConceptUse, sample

    config = SampleConfig(prompt, negative_prompt=NEGATIVE, seed=1, steps=args.steps, cfg=args.cfg, scheduler="euler",
                          width=args.size, height=args.size, regions=regions)
    queued = [0]

    def run(marks):
        queued[0] += 1
        uses = [ConceptUse(u.file, u.strength, u.path, u.region) for u in concepts]
        sample(base, dataclasses.replace(config, seed=queued[0]), uses, reporter=Reporter(
            progress=lambda step, total, preview=None: marks.append(_sync()), log=lambda m: None))

    return run


def isolation_main(args) -> None:
    """Regional sampling with two concept files applied everywhere vs isolated to their regions, on CPU."""
    from clif_core.models.tiny import build_tiny_model
    from clif_core.sample.regional import layout_regions
    from clif_core.sample.sampler import ConceptUse
    from tests.helpers.concept_files import make_concept_file

    torch.set_num_threads(1)
    base = build_tiny_model("sd1", 0)
    files = [make_concept_file(base, seed=i, names=(name,)) for i, name in enumerate(("alice", "bob"))]
    regions = layout_regions("left_right", ["<alice>, a woman", "<bob>, a man"])
    results = measure_interleaved({
        "regional, concepts everywhere": clif_runs(base, args, regions, [ConceptUse(f) for f in files], "two people"),
        "regional, concepts isolated": clif_runs(
            base, args, regions, [ConceptUse(f, region=i) for i, f in enumerate(files, 1)], "two people"),
    }, args.repeat)
    print(f"tiny SD1 model on CPU (1 thread), {args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}, euler, "
          f"batch 1, fp32, median of {args.repeat}")
    print(f"{'path':32s} {'it/s':>8s} {'s/image':>9s} {'first s':>8s}")
    for name, r in results.items():
        print(f"{name:32s} {r['it_s']:8.2f} {r['s_image']:9.3f} {r['first_s']:8.3f}")
    everywhere, isolated = results.values()
    print(f"isolated / everywhere: time per image x{isolated['s_image'] / everywhere['s_image']:.2f}, "
          f"it/s x{isolated['it_s'] / everywhere['it_s']:.2f}")


def diffusers_runs(base, args, folder: Optional[Path] = None):
    """diffusers' StableDiffusionPipeline: over `base`'s modules, or loaded from `folder` with from_pretrained."""
    from diffusers import StableDiffusionPipeline

    from clif_core.sample.schedulers import make_scheduler

    if folder is not None:
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipe.scheduler = make_scheduler(pipe.scheduler.config, "euler")
    else:
        pipe = StableDiffusionPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer, unet=base.unet,
            scheduler=make_scheduler(base.scheduler.config, "euler"), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
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


def comfy_measure(checkpoint: Path, latent_side: int, args, concepts: Optional[Path] = None) -> dict[str, dict]:
    """Run ComfyUI's KSampler on `checkpoint` in a subprocess with the rig's ComfyUI on the path: {"plain": figures}
    and, given a concept file `concepts`, {"concepts": figures} with it applied as Apply Concepts does."""
    from tests.comfyui.rig import comfy_subprocess_env

    cmd = [sys.executable, str(Path(__file__).resolve()), "--comfy-worker", str(checkpoint),
           "--latent-side", str(latent_side), "--steps", str(args.steps), "--cfg", str(args.cfg),
           "--repeat", str(args.repeat), "--threads", str(args.threads)] + \
        (["--comfy-cpu"] if args.cpu or args.smoke else []) + (["--concepts", str(concepts)] if concepts else [])
    done = subprocess.run(cmd, env=comfy_subprocess_env(), capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ComfyUI worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def comfy_worker(args) -> None:
    """Inside ComfyUI's environment: CLIPTextEncode + KSampler (euler, normal) + VAEDecode, as a graph runs them,
    optionally on MODEL and CLIP patched by Apply Concepts' code with the concept file `args.concepts`."""
    import types

    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0]] + (["--cpu"] if args.comfy_cpu else [])
    import comfy.sample

    # the repository's `nodes` package under another name: it would clash with ComfyUI's own `nodes` module
    package = types.ModuleType("clif_nodes")
    package.__path__ = [str(REPO / "nodes")]
    sys.modules["clif_nodes"] = package
    models = importlib.import_module("clif_nodes.comfy_models")
    if args.comfy_cpu:
        set_cpu_threads(args.threads)
    model, clip, vae = models.load_comfy_checkpoint(args.comfy_worker, None)

    def run_on(model, clip):
        def run(marks):
            with torch.inference_mode():
                positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
                negative = clip.encode_from_tokens_scheduled(clip.tokenize(NEGATIVE))
                latent = torch.zeros(1, 4, args.latent_side, args.latent_side)
                noise = comfy.sample.prepare_noise(latent, 1)
                samples = comfy.sample.sample(
                    model, noise, args.steps, args.cfg, "euler", "normal", positive, negative, latent,
                    callback=lambda *a: marks.append(_sync()), disable_pbar=True, seed=1)
                vae.decode(samples)

        return run

    results = {"plain": measure(run_on(model, clip), args.repeat)}
    if args.concepts:
        from clif_core.concepts.files import load_concept_file

        patching = importlib.import_module("clif_nodes.concept_patching")
        patched = patching.apply_concept_file(model, clip, load_concept_file(args.concepts), 1.0, 1.0)
        results["concepts"] = measure(run_on(*patched), args.repeat)
    print("RESULT " + json.dumps(results))


def print_table(results: dict[str, dict]) -> None:
    print(f"{'path':36s} {'it/s':>8s} {'s/image':>9s} {'first s':>8s} {'peak GiB':>9s}")
    for name, r in results.items():
        print(f"{name:36s} {r['it_s']:8.2f} {r['s_image']:9.3f} {r['first_s']:8.3f} {r['peak_gib']:9.2f}")


def compare(results: dict[str, dict], pairs: list[tuple[str, str]]) -> dict[str, float]:
    """it/s and time-per-image ratios of each (a, b) pair present in `results`."""
    ratios = {}
    for a, b in pairs:
        if a in results and b in results:
            ratios[f"{a} / {b}: it/s"] = ratio(results[a]["it_s"], results[b]["it_s"])
            ratios[f"{a} / {b}: time per image"] = ratio(results[a]["s_image"], results[b]["s_image"])
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="the sandbox model on the CPU, with and without concepts")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="--cpu: CPU threads")
    parser.add_argument("--smoke", action="store_true", help="the --cpu paths on the tiny model, 2 steps, 64 px")
    parser.add_argument("--isolation", action="store_true",
                        help="CPU, tiny model: concept isolation vs the same concept files everywhere")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--comfy-worker", help=argparse.SUPPRESS)
    parser.add_argument("--comfy-cpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--concepts", help=argparse.SUPPRESS)
    parser.add_argument("--latent-side", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.comfy_worker:
        comfy_worker(args)
        return 0
    if args.isolation:
        args.steps, args.size = min(args.steps, 10), 64
        isolation_main(args)
        return 0
    cpu = args.cpu or args.smoke
    if args.smoke:
        args.steps, args.size, args.repeat = 2, 64, 1
    elif args.cpu:
        args.steps = 20 if args.steps == parser.get_default("steps") else args.steps
    elif not torch.cuda.is_available():
        print("no GPU: this benchmark needs CUDA (use --cpu on the CPU, --smoke to check that the script runs)")
        return 0

    from clif_core.concepts.files import save_concept_file
    from clif_core.models.ldm_layout import save_single_file
    from clif_core.models.vae import vae_factor
    from clif_core.sample.regional import layout_regions
    from clif_core.sample.sampler import ConceptUse
    from tests.helpers.concept_files import make_concept_file

    folder = None
    if cpu:
        set_cpu_threads(args.threads)
    if args.smoke:
        from clif_core.models.tiny import build_tiny_model

        base, what = build_tiny_model("sd1", 0), "tiny SD1 model (smoke run)"
    elif args.cpu:
        from clif_core.models.loader import load_base_model
        from clif_core.models.vae import native_resolution

        folder = sandbox_folder()
        base = load_base_model(folder, device="cpu", dtype=torch.float32)
        args.size = native_resolution(base)
        what = f"sandbox model on the CPU ({args.threads} threads)"
    else:
        from clif_core.models.random_model import build_published_architecture

        base = build_published_architecture("sd1", seed=0, device="cuda", dtype=torch.float16)
        what = f"SD1.5 architecture (random weights) on {torch.cuda.get_device_name()}"
    clif = {"clif sampler": clif_runs(base, args)}
    if not cpu:
        clif["clif regional (2 regions)"] = clif_runs(
            base, args, layout_regions("left_right", ["an astronaut", "a horse"]))
    concept_file = make_concept_file(base, names=("alice",)) if cpu else None
    if concept_file is not None:
        clif["clif sampler + concepts"] = clif_runs(base, args, concepts=[ConceptUse(concept_file)])
    results = measure_interleaved(clif, args.repeat)
    results["diffusers pipeline"] = measure(diffusers_runs(base, args, folder), args.repeat)
    latent_side = args.size // vae_factor(base)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_single_file(base, Path(tmp) / "model.safetensors")
        concepts_path = save_concept_file(concept_file, Path(tmp) / "concepts.safetensors") if concept_file else None
        del base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        comfy = comfy_measure(checkpoint, latent_side, args, concepts_path)
        results["comfyui ksampler"] = comfy["plain"]
        if "concepts" in comfy:
            results["apply concepts + comfyui ksampler"] = comfy["concepts"]

    dtype = "fp32" if cpu else "fp16"
    print(f"{what}, {args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}, euler, batch 1, {dtype}, "
          f"median of {args.repeat}")
    print_table(results)
    ratios = compare(results, [("clif sampler", "diffusers pipeline"), ("clif sampler", "comfyui ksampler"),
                               ("clif sampler + concepts", "clif sampler"),
                               ("apply concepts + comfyui ksampler", "comfyui ksampler")])
    for path, plain in (("clif sampler + concepts", "clif sampler"),
                        ("apply concepts + comfyui ksampler", "comfyui ksampler")):
        if path in results:  # a new concept file: its first run against a repeated plain run
            ratios[f"{path}, first run / {plain}: time per image"] = ratio(
                results[path]["first_s"], results[plain]["s_image"])
    if not cpu:
        clif = results["clif sampler"]
        for other in ("diffusers pipeline", "comfyui ksampler"):
            ratios[f"clif sampler / {other}: peak memory"] = ratio(clif["peak_gib"], results[other]["peak_gib"])
        ratios["clif regional (2 regions) / clif sampler: time per image"] = ratio(
            results["clif regional (2 regions)"]["s_image"], clif["s_image"])
    print_ratios(ratios)
    rows = [{"name": name, **r} for name, r in results.items()]
    device = f"cpu, {args.threads} threads" if cpu else torch.cuda.get_device_name()
    write_json(args.json, result("sampling", device, {
        "what": what, "size": args.size, "steps": args.steps, "cfg": args.cfg, "scheduler": "euler",
        "dtype": dtype, "repeat": args.repeat}, rows, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
