"""`clif demo`: the main job, end to end on the embedded default model, into one report folder.

Two confusable sandbox characters → their pictures → the augmented set → CLIF stage 1 and 2 → multi-concept
samples → All-but-One erasure of a shape (before/after on the same seeds) → oracle scores → report.html.
The embedded default is the committed sandbox model; where it is missing, a tiny random model is used and
the report says its images are noise.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import ClifError
from .progress import Reporter

if TYPE_CHECKING:
    from .models.base import BaseModel

SIZES = ("smoke", "full")


@dataclass
class DemoConfig:
    """`size` "smoke" is the ≤ 15-minute CPU run; "full" trains and samples more (a GPU is advised)."""

    out: Path
    size: str = "smoke"
    seed: int = 0
    pair: int = 0  # which confusable pair of the shipped character spec

    @property
    def scale(self) -> int:
        return 1 if self.size == "smoke" else 8


@dataclass
class Phase:
    """One step of the job: wall time (time.perf_counter), CPU time of this process and the process's peak RSS
    at its end (resource.getrusage; None where the platform has no getrusage)."""

    name: str
    seconds: float
    cpu_seconds: Optional[float]
    peak_rss_mib: Optional[float]
    summary: str


@dataclass
class Report:
    """What the report page shows, filled step by step."""

    model_note: str = ""
    phases: list[Phase] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, relative path)
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def timing(self) -> dict[str, Any]:
        """The per-phase breakdown, the wall time since the report was started and the peak RSS, for metrics.json."""
        peaks = [p.peak_rss_mib for p in self.phases if p.peak_rss_mib is not None]
        return {"phases": [asdict(p) for p in self.phases], "total_seconds": time.perf_counter() - self.started,
                "peak_rss_mib": max(peaks) if peaks else None}


def _usage() -> tuple[Optional[float], Optional[float]]:
    """(CPU seconds, peak RSS MiB) of this process so far; (None, None) without the resource module (Windows)."""
    try:
        import resource
    except ImportError:
        return None, None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 2**20 if sys.platform == "darwin" else usage.ru_maxrss / 2**10  # bytes / KiB
    return usage.ru_utime + usage.ru_stime, peak


def _timed(report: Report, name: str, reporter: Reporter, fn: Callable[[], tuple[Any, str]]) -> Any:
    reporter.log(f"== {name}")
    cpu_start, _ = _usage()
    start = time.perf_counter()
    value, summary = fn()
    seconds = time.perf_counter() - start
    cpu_end, peak = _usage()
    cpu = cpu_end - cpu_start if cpu_end is not None and cpu_start is not None else None
    report.phases.append(Phase(name, seconds, cpu, peak, summary))
    reporter.log(f"   {summary} ({seconds:.1f} s)")
    return value


def _base_model(out: Path, report: Report) -> tuple[Any, Path]:
    """The sandbox model when its weights are committed, else a tiny random model (said plainly)."""
    from .models.bundled import SANDBOX_MODEL, SANDBOX_RECORD, SANDBOX_VISION, sandbox_available
    from .models.loader import load_base_model

    if sandbox_available():
        record = json.loads(SANDBOX_RECORD.read_text(encoding="utf-8")) if SANDBOX_RECORD.is_file() else {}
        report.model_note = f"the sandbox model ({record.get('quality', '?')} quality). {record.get('note', '')}"
        return load_base_model(SANDBOX_MODEL, device="cpu"), SANDBOX_VISION
    from .models.tiny import write_tiny_model

    paths = write_tiny_model("sd1", out / "tiny_model", seed=0)
    report.model_note = (
        "The sandbox model's weights are not in this checkout, so this run used a TINY RANDOMLY INITIALISED model: "
        "every generated image below is noise. The run exercises the whole pipeline, not image quality."
    )
    return load_base_model(paths.single_file, device="cpu"), paths.vision_dir


def _grid(images: list, columns: int) -> Any:
    from PIL import Image

    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % columns) * w, (i // columns) * h))
    return sheet


def _save(report: Report, out: Path, name: str, image: Any, caption: str) -> None:
    image.save(out / name)
    report.images.append((caption, name))


@dataclass
class _Run:
    """What the demo's phases share: the settings, the report being written and the models."""

    config: DemoConfig
    reporter: Reporter
    report: Report
    base: Optional[BaseModel] = None
    vision: Any = None

    @property
    def out(self) -> Path:
        return self.config.out

    @property
    def k(self) -> int:
        return self.config.scale

    def timed(self, name: str, fn: Callable[[], tuple[Any, str]]) -> Any:
        return _timed(self.report, name, self.reporter, fn)

    def save(self, name: str, image: Any, caption: str) -> None:
        _save(self.report, self.out, name, image, caption)


def run_demo(config: DemoConfig, reporter: Reporter) -> Path:
    """Run every step; return the path of report.html."""
    from .sandbox.characters import load_characters

    if config.size not in SIZES:
        raise ClifError(f"demo size {config.size!r} is unknown; use one of {', '.join(SIZES)}")
    config.out.mkdir(parents=True, exist_ok=True)
    run = _Run(config, reporter, Report())
    run.base, run.vision = run.timed("base model", lambda: (lambda b: (b, f"{b[0].family}, fingerprint "
                                                                          f"{b[0].fingerprint}"))(
        _base_model(run.out, run.report)))
    reporter.log(run.report.model_note)

    characters = load_characters()
    names = characters.pairs[config.pair]
    concepts = _concept_pictures(run, characters, names)
    _augment(run, concepts)
    trained = _train(run)
    name_a, name_b = names
    prompts = [f"<{name_a}> on the left and <{name_b}> on the right",
               f"<{name_b}> on the left and <{name_a}> on the right",
               f"<{name_a}>", f"<{name_b}>"]
    samples = _sample(run, trained, prompts)
    _erase(run)
    run.report.metrics["oracle"] = run.timed("oracle scores", lambda: (
        _oracle_scores(characters, names, prompts, samples), "identity per slot of the samples"))
    return _write_report(run.out, run.report)


def _concept_pictures(run: _Run, characters: Any, names: tuple[str, str]) -> list:
    """Five renders of each character of the confusable pair."""
    from .sandbox.characters import character_concept

    name_a, name_b = names
    concepts = run.timed("concept pictures", lambda: (
        [character_concept(characters[n], f"<{n}>", n=5, seed=run.config.seed) for n in names],
        f"5 renders each of {name_a} and {name_b} (a confusable pair)"))
    run.save("concept_pictures.png", _grid([im for c in concepts for im in c.images], 5),
             f"the training pictures: {name_a} (top), {name_b} (bottom)")
    return concepts


def _augment(run: _Run, concepts: list) -> None:
    """The augmented set in OUT/dataset/, with common concepts drawn by the base model."""
    from .augment.common_concepts import resolve_common
    from .augment.compose import AugmentConfig
    from .augment.dataset import build_dataset, load_dataset, preview_grid
    from .augment.fallback import FallbackSegmenter
    from .sample.config import SampleConfig
    from .sample.sampler import make_generate

    config, k = run.config, run.k
    generate = make_generate(run.base, SampleConfig(prompt="", steps=12 * k, cfg=4.0, scheduler="dpmpp_2m_karras"))
    dataset_dir = run.out / "dataset"

    def augment() -> tuple[Any, str]:
        common = resolve_common(["red circle", "blue square"], generate=generate, fingerprint=run.base.fingerprint,
                                cache_dir=run.out / "common_cache", n=2, seed=config.seed, reporter=run.reporter)
        counts = AugmentConfig(seed=config.seed, n_global=8 * k, n_region=8 * k, n_mix=8 * k, n_single=4 * k,
                               resolution=64, n_parts=3)
        build_dataset(concepts, dataset_dir, counts, FallbackSegmenter(), common=common, reporter=run.reporter,
                      overwrite=True)
        ds = load_dataset(dataset_dir)
        return ds, f"{len(ds)} samples (Global, Region, Mix, single) in {dataset_dir.name}/"

    ds = run.timed("augmented set", augment)
    run.save("dataset_preview.png", preview_grid(ds, 12, columns=6, cell=128),
             "samples of the augmented set with their captions")


def _train(run: _Run) -> Any:
    """Both CLIF stages on the augmented set; their metrics and loss curves go into the report."""
    from .train.both_stages import train_concepts
    from .train.contrastive import ContrastiveConfig
    from .train.decoder import DecoderConfig
    from .train.leakage import SCORES_FILE
    from .training.loop import LoopConfig

    config, k = run.config, run.k

    def train() -> tuple[Any, str]:
        stage1 = ContrastiveConfig(lr=5e-3, loop=LoopConfig(steps=40 * k, batch_size=16, seed=config.seed))
        stage2 = DecoderConfig(lr=1e-3, token_lr=1e-3, preview_steps=12, loop=LoopConfig(
            steps=60 * k, batch_size=8, seed=config.seed, preview_every=20 * k))  # the leakage previews
        result = train_concepts(run.base, run.out / "dataset", run.vision, run.out / "run", stage1, stage2,
                                reporter=run.reporter)
        return result, f"concept file {result.path.name}"

    trained = run.timed("CLIF training (stage 1 + stage 2)", train)
    run.report.metrics["training"] = trained.metrics
    for stage in ("stage1", "stage2"):
        curve = run.out / "run" / stage / "loss.png"
        if curve.is_file():
            run.report.images.append((f"{stage} loss curve", str(curve.relative_to(run.out))))
    previews = sorted((run.out / "run" / "stage2" / "previews").glob("step-*.png"))
    if previews:
        run.report.images.append(("stage 2's last leakage preview (each concept alone, both together, one seed)",
                                  str(previews[-1].relative_to(run.out))))
    scores = run.out / "run" / "stage2" / "previews" / SCORES_FILE
    if scores.is_file():
        run.report.metrics["leakage_previews"] = _preview_readings(scores)
    return trained


def _preview_readings(path: Path) -> dict[str, dict[str, str]]:
    """The oracle's reading of each leakage-preview column per training step (what it recognised), from
    previews/oracle.csv: the run's leakage curve in the report."""
    from .train.leakage import read_scores

    readings: dict[str, dict[str, str]] = {}
    for row in read_scores(path):
        verdict = "right" if row["correct"] == "1" else "wrong"
        readings.setdefault(f"step {row['step']}", {})[row["column"]] = f"{row['recognised'] or 'none'} ({verdict})"
    return readings


def _sample(run: _Run, trained: Any, prompts: list[str]) -> dict[str, list]:
    """Every prompt with the trained concept file, `4 × scale` seeds each; the images per prompt."""
    from .sample.config import SampleConfig
    from .sample.recipe import save_png
    from .sample.sampler import sample

    seeds = 4 * run.k

    def sampling() -> tuple[Any, str]:
        rows = {}
        for p in prompts:
            result = sample(run.base, SampleConfig(prompt=p, seed=run.config.seed, batch=seeds, steps=20, cfg=4.0),
                            [trained.file], run.reporter)
            rows[p] = result.images
            save_png(result.images[0], run.out / f"sample_{len(rows)}.png", result.recipe)
        return rows, f"{len(prompts)} prompts × {seeds} seeds"

    samples = run.timed("multi-concept sampling", sampling)
    run.save("samples.png", _grid([im for p in prompts for im in samples[p]], seeds),
             "rows: " + " | ".join(html.escape(p) for p in prompts))
    return samples


def _erase(run: _Run) -> None:
    """All-but-One erasure of a shape, and the same seeds sampled before and after."""
    from .erase.config import EraseConfig, EraseTarget
    from .erase.trainer import erase_concepts
    from .sample.config import SampleConfig
    from .sample.sampler import sample
    from .sheets import labelled_grid
    from .training.loop import LoopConfig

    config, base, target, alternative = run.config, run.base, "circle", "square"

    def erase() -> tuple[Any, str]:
        cfg = EraseConfig(targets=[EraseTarget(target, alternative)],
                          loop=LoopConfig(steps=30 * run.k, seed=config.seed), trajectories=2, sample_steps=10)
        result = erase_concepts(base, cfg, run.out / "erase_run", run.out / "erase_circle.safetensors",
                                reporter=run.reporter, overwrite=True)
        return result, f"patch {result.path.name}"

    erased = run.timed("All-but-One erasure", erase)
    run.report.metrics["erasure"] = erased.metrics
    erase_prompts = [f"a red {target}", "a green triangle"]

    def before_after() -> tuple[Any, str]:
        rows = []
        for p in erase_prompts:
            cfg = SampleConfig(prompt=p, seed=config.seed, batch=4, steps=20, cfg=4.0)
            rows += [(f"'{p}' before", sample(base, cfg, (), run.reporter).images),
                     (f"after: {target} erased", sample(base, cfg, [erased.file], run.reporter).images)]
        return rows, f"{len(erase_prompts)} prompts × 4 seeds, before and after"

    rows = run.timed("erasure before/after samples", before_after)
    run.save("erasure.png", labelled_grid(rows, cell=64, label_width=120),
             f"the same 4 seeds per prompt before and after erasing '{target}' → '{alternative}'")


def _oracle_scores(characters: Any, names: tuple[str, str], prompts: list[str], samples: dict) -> dict:
    """What the sandbox oracle reads in the samples (absent weights: said, not invented). Per prompt: how many
    samples are right (every asked character recognised, every part and the detail, in its place) and what it
    recognised in each ("ada / none": ada on the left, nothing it knows on the right); and a verdict, alone
    and together."""
    from .sandbox.oracle import DEFAULT_WEIGHTS, Oracle

    if not DEFAULT_WEIGHTS.is_file():
        return {"note": "no oracle weights in this checkout"}
    oracle = Oracle.load()
    a, b = names
    expected = {prompts[0]: {"left": a, "right": b}, prompts[1]: {"left": b, "right": a},
                prompts[2]: {"center": a}, prompts[3]: {"center": b}}
    scores = {}
    for prompt, want in expected.items():
        seen = [{slot: characters.match(r.slots.get(slot)) for slot in want} for r in oracle.read(samples[prompt])]
        scores[prompt] = {"right": sum(all(s[slot] == name for slot, name in want.items()) for s in seen),
                          "of": len(seen), "read": [" / ".join(s[slot] or "none" for slot in want) for s in seen]}
    together = [scores[p] for p in prompts[:2]]
    verdict = (f"alone: {a} right in {scores[prompts[2]]['right']} of {scores[prompts[2]]['of']} samples, {b} in "
               f"{scores[prompts[3]]['right']} of {scores[prompts[3]]['of']}; together: both right and in their "
               f"places in {sum(t['right'] for t in together)} of {sum(t['of'] for t in together)}")
    return {"prompts": scores, "verdict": verdict}


def _write_report(out: Path, report: Report) -> Path:
    from .fileio import write_text_atomic

    def number(value: Optional[float], unit: str) -> str:
        return "–" if value is None else f"{value:.1f} {unit}"

    timing = report.timing()
    rows = "".join(f"<tr><td>{html.escape(p.name)}</td><td>{p.seconds:.1f} s</td><td>{number(p.cpu_seconds, 's')}"
                   f"</td><td>{number(p.peak_rss_mib, 'MiB')}</td><td>{html.escape(p.summary)}</td></tr>"
                   for p in report.phases)
    rows = ("<tr><th>step</th><th>wall time</th><th>CPU time</th><th>peak RSS so far</th><th>result</th></tr>" + rows
            + f"<tr><th>total</th><th>{timing['total_seconds']:.1f} s</th><th></th>"
              f"<th>{number(timing['peak_rss_mib'], 'MiB')}</th><th></th></tr>")
    figures = "".join(f'<figure><img src="{html.escape(p)}"><figcaption>{c}</figcaption></figure>'
                      for c, p in report.images)
    oracle = report.metrics.get("oracle", {})
    verdict = ""
    if "verdict" in oracle:
        lines = "".join(f"<tr><td>{html.escape(p)}</td><td>{s['right']} of {s['of']}</td>"
                        f"<td>{html.escape(', '.join(s['read']))}</td></tr>" for p, s in oracle["prompts"].items())
        verdict = (f"<h2>Did the characters come out right?</h2><p>The sandbox oracle: {html.escape(oracle['verdict'])}"
                   f".</p><table><tr><th>prompt</th><th>right</th><th>what it recognised, per sample</th></tr>"
                   f"{lines}</table>")
    metrics = html.escape(json.dumps(report.metrics, indent=1, sort_keys=True, default=str))
    page = f"""<!doctype html><meta charset="utf-8"><title>CLIF main job</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}img{{image-rendering:pixelated;
max-width:100%;width:640px}}td{{padding:2px 10px}}figure{{margin:1.5em 0}}</style>
<h1>CLIF main job</h1><p><b>Model:</b> {html.escape(report.model_note)}</p>{verdict}
<h2>Steps: wall time, CPU time, memory</h2><table>{rows}</table>
<h2>Pictures</h2>{figures}<h2>Metrics</h2><pre>{metrics}</pre>"""
    write_text_atomic(out / "metrics.json", json.dumps({**report.metrics, "timing": timing}, indent=1, sort_keys=True,
                                                       default=str))
    return write_text_atomic(out / "report.html", page)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the main job: train two confusable concepts, sample, erase, report")
    parser.add_argument("--out", type=Path, default=Path("main-job-output"))
    parser.add_argument("--size", choices=SIZES, default="smoke")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .cli import tqdm_reporter

    path = run_demo(DemoConfig(out=args.out, size=args.size, seed=args.seed), tqdm_reporter("main job"))
    print(f"report: {path}")
    return 0
