"""`clif bench erase`: All-but-One against ESD on the sandbox base model, scored by the oracle.

Targets (each erasure its own run per method, all at the same budget: steps × batch, the same x_t pool
settings and seed): an object shape with an alternative (`shape:circle->square`), a colour (`colour:red`),
a character (`character:ada`, erased by its caption, which names its parts), and several of them erased in
one run (`shape:circle->square+colour:red+character:`), each scored on its own. For every target:

- target prompts: held-out world scenes with the target put in (the first object's shape / colour, or the
  character in its place); "target produced" is the share of images in which the oracle sees it, and
  "alternative produced" the share showing the alternative;
- other prompts: held-out scenes that do not contain the target; scored by the oracle against their scene
  (attribute accuracy and exact scenes) and compared with the original model's image of the same prompt
  and seed (drift: mean absolute pixel difference in 0..255 and relative distance in oracle features);
- the empty prompt: the same drift on images of "" (the unconditional prediction All-but-One holds in place);
- robustness (a): prompts that reach the target another way (`robustness.FAMILIES`), "target produced"
  per prompt family; (b) recovery: what textual inversion of a new token, and CLIF training, on pictures of
  the target bring back on the erased model (`recovery.py`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from clif_core.errors import ClifError
from clif_core.progress import SILENT, Reporter

from .erase_targets import Erasure, other_scenes, parse_targets, produced, prompt_text, sample_images, target_scenes
from .recovery import ATTACKS, recover, recovery_table
from .robustness import FAMILIES, family_prompts
from .stats import NOT_MEASURED, Estimate, bootstrap

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

METHODS = ("all-but-one", "esd-lora", "esd-x")
METHOD_TITLES = {
    "original": "original model",
    "all-but-one": "All-but-One (LoRA)",
    "esd-lora": "ESD objective on the same LoRA",
    "esd-x": "ESD-x (cross-attention weights)",
}
_METHOD_CONFIG = {"all-but-one": ("all-but-one", "auto"), "esd-lora": ("esd", "lora"), "esd-x": ("esd-x", "auto")}
METRICS = (
    ("target", "target produced ↓"),
    ("alternative", "alternative produced ↑"),
    ("other_attributes", "other prompts: attribute accuracy ↑"),
    ("other_exact", "other prompts: exact scenes ↑"),
    ("drift_pixels", "drift, pixels (0–255) ↓"),
    ("drift_features", "drift, oracle features (relative) ↓"),
    ("uncond_drift_pixels", "empty prompt: drift, pixels ↓"),
    ("uncond_drift_features", "empty prompt: drift, oracle features ↓"),
)
# character: the spec's first paired character; '+' joins targets erased together in one run
DEFAULT_TARGETS = "shape:circle->square,colour:red,character:,shape:circle->square+colour:red+character:"


@dataclass(frozen=True)
class ErasureSize:
    steps: int
    batch: int
    trajectories: int  # x_t pool: DDIM trajectories of the frozen model per target
    pool_steps: int  # steps per trajectory
    target_prompts: int
    other_prompts: int
    sample_steps: int
    robust_prompts: int  # prompts per robustness family
    recovery_targets: Optional[int]  # how many targets (in order, joint runs' counted each) are attacked; None: all
    recovery_steps: int  # recovery budget: steps × batch, the same for every attack and model
    recovery_batch: int
    recovery_prompts: int  # seeds of the new token's prompt
    recovery_sets: tuple[int, int, int, int] = (4, 4, 4, 8)  # CLIF's set: Global, Region, single; TI's plain set
    recovery_pictures: int = 5
    guidance: float = 5.0


SIZES = {
    "test": ErasureSize(steps=2, batch=1, trajectories=1, pool_steps=2, target_prompts=3, other_prompts=3,
                        sample_steps=2, robust_prompts=2, recovery_targets=1, recovery_steps=2, recovery_batch=1,
                        recovery_prompts=2, recovery_sets=(1, 1, 1, 2)),
    "smoke": ErasureSize(steps=40, batch=2, trajectories=2, pool_steps=10, target_prompts=16, other_prompts=16,
                         sample_steps=12, robust_prompts=8, recovery_targets=1, recovery_steps=40, recovery_batch=4,
                         recovery_prompts=8),
    "full": ErasureSize(steps=200, batch=4, trajectories=4, pool_steps=25, target_prompts=64, other_prompts=64,
                        sample_steps=20, robust_prompts=64, recovery_targets=None, recovery_steps=200,
                        recovery_batch=4, recovery_prompts=32, recovery_sets=(12, 12, 8, 16)),
}


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class Images:
    target: list[np.ndarray]  # per target of the run: uint8 [N, 64, 64, 3]
    other: np.ndarray
    empty: np.ndarray  # the empty prompt, one seed per image
    families: list[dict[str, np.ndarray]]  # per target: robustness family → images (absent: does not apply)


def drift(before: np.ndarray, after: np.ndarray, oracle: Any) -> tuple[list[float], list[float]]:
    """Per image pair (same prompt, same seed): mean absolute pixel difference (0..255) and the relative
    oracle-feature distance ‖f(x) − f(x′)‖ / ‖f(x)‖."""
    pixels = np.abs(before.astype(np.float64) - after.astype(np.float64)).mean(axis=(1, 2, 3)).tolist()
    fa, fb = oracle.features(before), oracle.features(after)
    return pixels, ((fa - fb).norm(dim=1) / fa.norm(dim=1).clamp(min=1e-8)).tolist()


def score(erasure: Erasure, scenes_other: list[Any], images: Images, original: Optional[Images], oracle: Any,
          characters: Any) -> list[dict[str, list[float]]]:
    """Per target of the run, per-image values of every metric and robustness family (see the module
    docstring); the other-prompt and empty-prompt metrics are the run's, the same for each of its targets.
    Drift only against an original."""
    from clif_core.sandbox.oracle import attribute_agreement, scene_correct


    shared: dict[str, list[float]] = {}
    readings = oracle.read(images.other)
    attrs = []
    for scene, r in zip(scenes_other, readings):
        agree = {k: v for k, v in attribute_agreement(scene, r).items() if not k.startswith("detail")}
        counted = sum(v[1] for v in agree.values())
        attrs.append(sum(v[0] for v in agree.values()) / counted if counted else float("nan"))
    shared["other_attributes"] = attrs
    shared["other_exact"] = [float(scene_correct(s, r)) for s, r in zip(scenes_other, readings)]
    if original is None:
        for key in ("drift_pixels", "drift_features", "uncond_drift_pixels", "uncond_drift_features"):
            shared[key] = []
    else:
        shared["drift_pixels"], shared["drift_features"] = drift(original.other, images.other, oracle)
        shared["uncond_drift_pixels"], shared["uncond_drift_features"] = drift(original.empty, images.empty, oracle)
    out = []
    for k, target in enumerate(erasure.targets):
        values = {"target": produced(target, target.value, images.target[k], oracle, characters),
                  "alternative": produced(target, target.alternative, images.target[k], oracle, characters), **shared}
        for family, _ in FAMILIES:
            values[family] = produced(target, target.value, images.families[k].get(family, images.other[:0]), oracle,
                                      characters)
        out.append(values)
    return out


def reference_distance(images: np.ndarray, oracle: Any) -> tuple[float, float]:
    """The drift scale of unrelated images: mean pixel and relative feature distance between consecutive
    other-prompt images of the original model (different prompts, different seeds)."""
    if len(images) < 2:
        return float("nan"), float("nan")
    pixels, features = drift(images[:-1], images[1:], oracle)
    return float(np.mean(pixels)), float(np.mean(features))


# ------------------------------------------------------------------------------------------------ running


def parse_budget(text: str) -> tuple[int, int]:
    """'40x4' → (40 steps, batch 4); '' → (0, 0): the size's."""
    if not text.strip():
        return 0, 0
    steps, x, batch = text.lower().partition("x")
    try:
        budget = int(steps), int(batch)
    except ValueError:
        budget = (0, 0)
    if not x or budget[0] < 2 or budget[1] < 1:
        raise ClifError(f"recovery budget {text!r}: write STEPSxBATCH with at least 2 steps, e.g. 40x4")
    return budget


@dataclass
class EraseBenchConfig:
    out: Path
    size: str = "smoke"
    spec: Optional[Path] = None
    targets: str = DEFAULT_TARGETS
    seeds: int = 0  # 0: the size's prompt counts; else that many target and other prompts (one seed each)
    model: Optional[Path] = None
    vision: Optional[Path] = None  # the vision tower CLIF's stage 1 uses in the recovery attack
    work: Optional[Path] = None
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    recovery_steps: int = 0  # recovery attacks' budget, steps × batch (0: the size's)
    recovery_batch: int = 0
    recovery_targets: int = -1  # how many targets get the recovery attacks (-1: the size's; 0: none)
    command: str = ""

    @property
    def dims(self) -> ErasureSize:
        if self.size not in SIZES:
            raise ClifError(f"benchmark size {self.size!r} is unknown; use one of {', '.join(SIZES)}")
        size = SIZES[self.size]
        if self.seeds:
            size = replace(size, target_prompts=self.seeds, other_prompts=self.seeds)
        return replace(size, recovery_steps=self.recovery_steps or size.recovery_steps,
                       recovery_batch=self.recovery_batch or size.recovery_batch,
                       recovery_targets=size.recovery_targets if self.recovery_targets < 0 else self.recovery_targets)

    def check(self) -> None:
        self.dims  # noqa: B018 - validates the size
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ClifError(f"unknown erase method(s) {bad}; choose among {', '.join(METHODS)}")
        if self.seeds < 0:
            raise ClifError(f"seeds is {self.seeds}; use a positive number (0: the size's)")
        if self.recovery_steps < 0 or self.recovery_batch < 0:
            raise ClifError("the recovery budget cannot be negative (0: the size's)")


@dataclass
class ErasureRun:
    erasure: Erasure
    images: dict[str, Images] = field(default_factory=dict)  # "original" and each method
    scores: dict[str, list[dict[str, list[float]]]] = field(default_factory=dict)  # model → per target → metric
    seconds: dict[str, float] = field(default_factory=dict)
    reference: tuple[float, float] = (float("nan"), float("nan"))
    recovery: list[Any] = field(default_factory=list)  # recovery.Recovery per attacked target


def erase(erasure: Erasure, method: str, base: BaseModel, characters: Any, config: EraseBenchConfig, work: Path,
          reporter: Reporter = SILENT) -> Any:
    """One erasure run (every target of `erasure` at once); returns the patch (a ConceptFile)."""
    from clif_core.erase.config import EraseConfig, EraseTarget
    from clif_core.erase.trainer import erase_concepts
    from clif_core.training.loop import LoopConfig

    d = config.dims
    name, params = _METHOD_CONFIG[method]
    targets = [EraseTarget(prompt_text(t.kind, t.value, characters),
                           prompt_text(t.kind, t.alternative, characters) if t.alternative else None)
               for t in erasure.targets]
    cfg = EraseConfig(
        targets=targets, method=name, params=params, trajectories=d.trajectories, sample_steps=d.pool_steps,
        loop=LoopConfig(steps=d.steps, batch_size=d.batch, seed=config.seed, checkpoint_every=d.steps,
                        log_every=d.steps, preview_every=0))
    slug = erasure.slug()
    result = erase_concepts(base, cfg, work / slug / method, work / slug / f"{method}.safetensors",
                            reporter=reporter, overwrite=True)
    return result.file


def run_erasure(erasure: Erasure, config: EraseBenchConfig, model: Any, oracle: Any, characters: Any, work: Path,
                attacked: int, reporter: Reporter) -> ErasureRun:
    """Erase with every method, sample and score; the first `attacked` targets also get the recovery attacks."""
    from clif_core.sandbox.scene import caption

    d, base = config.dims, model.base
    scenes_o = other_scenes(erasure.targets, d.other_prompts, characters)
    prompts_t = [[caption(s, background=False) for s in target_scenes(t, d.target_prompts, characters)]
                 for t in erasure.targets]
    prompts_o = [caption(s, background=False) for s in scenes_o]
    prompts_f = [{f: p for f, _ in FAMILIES
                  if (p := family_prompts(t, f, d.robust_prompts, erasure.targets, characters))}
                 for t in erasure.targets]
    run = ErasureRun(erasure)

    def images(patch: Any = None) -> Images:
        def gen(prompts: list[str]) -> np.ndarray:
            return sample_images(base, prompts, d.sample_steps, d.guidance, config.seed, patch)

        return Images([gen(p) for p in prompts_t], gen(prompts_o), gen([""] * d.other_prompts),
                      [{f: gen(p) for f, p in per.items()} for per in prompts_f])

    reporter.log(f"{erasure.label()}: sampling the original model")
    run.images["original"] = original = images()
    run.scores["original"] = score(erasure, scenes_o, original, None, oracle, characters)
    run.reference = reference_distance(original.other, oracle)
    patches = {}
    for method in config.methods:
        reporter.log(f"{erasure.label()}: erasing with {method}")
        start = time.perf_counter()
        patches[method] = erase(erasure, method, base, characters, config, work, reporter)
        run.seconds[method] = time.perf_counter() - start
        run.images[method] = erased = images(patches[method])
        run.scores[method] = score(erasure, scenes_o, erased, original, oracle, characters)
    for target in erasure.targets[:attacked]:
        reporter.log(f"{erasure.row_label(target)}: recovery attacks")
        run.recovery.append(recover(target, erasure, patches, config, model, oracle, characters,
                                    work / erasure.slug() / "recovery" / target.slug(), work / "common_cache",
                                    reporter))
    return run


def summarise(runs: Sequence[ErasureRun]) -> dict[str, dict[str, dict[str, Estimate]]]:
    """target row label → model → metric or family → estimate (n/a where it does not apply)."""
    keys = [k for k, _ in METRICS] + [f for f, _ in FAMILIES]
    out: dict[str, dict[str, dict[str, Estimate]]] = {}
    for run in runs:
        for i, target in enumerate(run.erasure.targets):
            out[run.erasure.row_label(target)] = {
                m: {k: bootstrap(values[i][k]) if values[i][k] else NOT_MEASURED for k in keys}
                for m, values in run.scores.items()}
    return out


def run_erasure_bench(config: EraseBenchConfig, reporter: Reporter = SILENT) -> dict[str, Path]:
    """Run the benchmark; write OUT/erase.md, OUT/erase.png, OUT/erase.json; return their paths."""
    from clif_core.sandbox.characters import load_characters

    from .setup import load_bench_model, load_oracle

    config.check()
    started = time.perf_counter()
    characters = load_characters(config.spec)
    erasures = parse_targets(config.targets, characters)
    model = load_bench_model(config.model, config.vision)
    oracle = load_oracle()
    work = config.work or config.out / f"work-erase-{config.size}"
    left = config.dims.recovery_targets
    if left is None:
        left = sum(len(e.targets) for e in erasures)
    runs = []
    for i, erasure in enumerate(erasures):
        reporter.progress(i, len(erasures), None)
        runs.append(run_erasure(erasure, config, model, oracle, characters, work, max(0, left), reporter))
        left -= len(erasure.targets)
    reporter.progress(len(erasures), len(erasures), None)
    return _write(config, characters, model, runs, summarise(runs), time.perf_counter() - started)


def _write(config: EraseBenchConfig, characters: Any, model: Any, runs: list[ErasureRun],
           table: dict[str, dict[str, dict[str, Estimate]]], seconds: float) -> dict[str, Path]:
    """The report files (results JSON, markdown, grids). Over 60 lines: the report's layout written top to
    bottom, one section after the other."""
    from clif_core.fileio import write_text_atomic

    from ..sheets import labelled_grid
    from .report import finite_json, markdown_table, save_png

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    d = config.dims
    show = min(4, d.target_prompts, d.other_prompts)
    grid_rows = [(f"{run.erasure.label()}: {METHOD_TITLES[m]}",
                  [*run.images[m].target[0][:show], *run.images[m].other[:show], *run.images[m].empty[:show]])
                 for run in runs for m in ("original", *config.methods)]
    columns = ([f"target {i + 1}" for i in range(show)] + [f"other {i + 1}" for i in range(show)]
               + [f"empty prompt {i + 1}" for i in range(show)])
    paths = {"grid": save_png(labelled_grid(grid_rows, columns, label_width=190), out / "erase.png")}
    rows = [(f"{label}: {METHOD_TITLES[m]}", est) for label, per in table.items() for m, est in per.items()]
    families = [("target", "erased words (as above)"), *FAMILIES]
    refs = "; ".join(f"{r.erasure.label()}: {r.reference[0]:.1f} px, {r.reference[1]:.2f} features" for r in runs)
    recovery_rows = [row for r in runs for rec in r.recovery for row in recovery_table(rec, r.erasure, config.methods)]
    lines = [
        "# Erasure benchmark (sandbox)",
        "",
        f"Model: {model.note}  ",
        f"Model fingerprint: `{model.base.fingerprint}`",
        "",
        f"Command: `{config.command or 'clif bench erase'}`  ",
        f"Size: `{config.size}`: per erasure run {d.target_prompts} target prompts per target and "
        f"{d.other_prompts} other prompts and empty-prompt seeds (one seed each, the same seeds for every model), "
        f"{d.robust_prompts} prompts per robustness family, {d.sample_steps} DDIM sampling steps, CFG {d.guidance}; "
        f"characters from {characters.source}.  ",
        f"Budget per method: {d.steps} steps × batch {d.batch} on the same x_t pool settings ({d.trajectories} "
        f"trajectories × {d.pool_steps} DDIM steps under each target prompt, seed {config.seed}); each method's "
        "default learning rate (docs/erasure.md).  ",
        f"Wall time: {seconds / 60:.1f} min.",
        "",
        "Each cell: mean over images [bootstrap 95% interval]; n/a where the metric does not apply. A target "
        "marked [N in one run] was erased together with the others of its run and is scored on its own; the "
        "other-prompt and empty-prompt columns are that run's.",
        "",
        markdown_table(rows, METRICS, first="target: model", digits=3),
        "",
        "Drift scale of unrelated images (the original model's consecutive other-prompt images, different prompts "
        f"and seeds): {refs}.",
        "",
        "## Robustness (a): target still produced, per prompt family",
        "",
        "Prompts that reach the target another way than the words it was erased by (docs/benchmarks.md); "
        "lower is better for an erased model, the original model's row is the base rate.",
        "",
        markdown_table(rows, families, first="target: model", digits=3),
        "",
        "## Robustness (b): recovery, target produced by the new token",
        "",
        f"{d.recovery_pictures} renders of the target; each attack trains a new token on them at "
        f"{d.recovery_steps} steps × batch {d.recovery_batch} ({', '.join(t for _, t in ATTACKS)}), on the "
        f"original and on each erased model, then samples the token alone ({d.recovery_prompts} seeds). "
        + ("" if recovery_rows else "No target was attacked at this size (recovery_targets 0)."),
        "",
        markdown_table(recovery_rows, [("original", METHOD_TITLES["original"])]
                       + [(m, METHOD_TITLES[m]) for m in config.methods], first="target: attack", digits=3)
        if recovery_rows else "",
        "",
        "Erasure seconds: " + "; ".join(
            f"{r.erasure.label()}: " + ", ".join(f"{m} {r.seconds[m]:.0f}" for m in config.methods) for r in runs) + ".",
        "",
        f"Grid (`erase.png`): per erasure run and model, the first {show} target prompts (of its first target), "
        f"the first {show} other prompts and the first {show} empty-prompt seeds (same seeds in every row).",
    ]
    paths["table"] = write_text_atomic(out / "erase.md", "\n".join(lines) + "\n")
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "size": asdict(d), "seconds": seconds, "model": model.note, "fingerprint": model.base.fingerprint,
        "table": {t: {m: {k: e.to_dict() for k, e in est.items()} for m, est in per.items()} for t, per in table.items()},
        "runs": [{"targets": [asdict(t) for t in r.erasure.targets], "scores": r.scores, "seconds": r.seconds,
                  "reference": r.reference, "recovery": [rec.to_dict() for rec in r.recovery]} for r in runs],
    }
    paths["json"] = write_text_atomic(out / "erase.json", json.dumps(finite_json(record), indent=1) + "\n")
    return paths
