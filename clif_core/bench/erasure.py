"""`clif bench erase`: All-but-One against ESD on the sandbox base model, scored by the oracle.

Targets (each its own erasure run per method, all at the same budget: steps × batch, the same x_t pool
settings and seed): an object shape with an alternative (`shape:circle->square`), a colour (`colour:red`)
and a character (`character:ada`, erased by its caption, which names its parts). For every target:

- target prompts: held-out world scenes with the target put in (the first object's shape / colour, or the
  character in its place); "target produced" is the share of images in which the oracle sees it, and
  "alternative produced" the share showing the alternative;
- other prompts: held-out scenes that do not contain the target; scored by the oracle against their scene
  (attribute accuracy and exact scenes) and compared with the original model's image of the same prompt
  and seed (drift: mean absolute pixel difference in 0..255 and relative distance in oracle features).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from clif_core.errors import ClifError
from clif_core.progress import SILENT, Reporter

from .stats import NOT_MEASURED, Estimate, bootstrap

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
)
DEFAULT_TARGETS = "shape:circle->square,colour:red,character:"  # character: the spec's first paired character
TARGET_KINDS = ("shape", "colour", "character")
PROMPT_SEED_BASE = 3_500_000_000  # scenes no pretraining or oracle run rendered


@dataclass(frozen=True)
class ErasureSize:
    steps: int
    batch: int
    trajectories: int  # x_t pool: DDIM trajectories of the frozen model per target
    pool_steps: int  # steps per trajectory
    target_prompts: int
    other_prompts: int
    sample_steps: int
    guidance: float = 5.0


SIZES = {
    "test": ErasureSize(steps=2, batch=1, trajectories=1, pool_steps=2, target_prompts=3, other_prompts=3,
                        sample_steps=2),
    "smoke": ErasureSize(steps=40, batch=2, trajectories=2, pool_steps=10, target_prompts=16, other_prompts=16,
                         sample_steps=12),
    "full": ErasureSize(steps=200, batch=4, trajectories=4, pool_steps=25, target_prompts=64, other_prompts=64,
                        sample_steps=20),
}


@dataclass(frozen=True)
class Target:
    """What to erase: `kind` shape / colour / character, its `value`, and an optional alternative of the same kind."""

    kind: str
    value: str
    alternative: Optional[str] = None

    def label(self) -> str:
        return f"{self.kind} {self.value}" + (f" -> {self.alternative}" if self.alternative else "")


def parse_targets(text: str, characters: Any) -> list[Target]:
    """'shape:circle->square,colour:red,character:ada' (an empty character: the spec's first paired one)."""
    from clif_core.sandbox.attributes import COLOUR_NAMES, SHAPES

    allowed = {"shape": SHAPES, "colour": COLOUR_NAMES, "character": tuple(characters.characters)}
    targets = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        kind, colon, rest = item.partition(":")
        if not colon or kind not in TARGET_KINDS:
            raise ClifError(f"erase target {item!r}: write kind:value[->alternative] with kind one of "
                            f"{', '.join(TARGET_KINDS)}, e.g. shape:circle->square")
        value, _, alternative = (s.strip() for s in rest.partition("->"))
        if kind == "character" and not value:
            value = characters.pairs[0][0] if characters.pairs else next(iter(characters.characters))
        for v in (value, alternative):
            if v and v not in allowed[kind]:
                raise ClifError(f"erase target {item!r}: {v!r} is not a {kind} of {characters.source if kind == 'character' else 'the sandbox world'}; "
                                f"use one of {', '.join(allowed[kind])}")
        targets.append(Target(kind, value, alternative or None))
    if not targets:
        raise ClifError("no erase targets given; e.g. --targets shape:circle->square,colour:red,character:ada")
    return targets


# ------------------------------------------------------------------------------------------------ scenes


def _character_values(thing: Any) -> dict[str, str]:
    from clif_core.sandbox.oracle_heads import thing_values

    return {k: v for k, v in thing_values(thing).items() if not k.startswith("detail")}


def shows(kind: str, value: str, thing: Any, characters: Any) -> bool:
    """Whether one slot's content shows the target: the shape; the colour on the object or any figure part;
    the character's parts (its uncaptioned detail ignored) with at most one attribute misread."""
    if thing is None:
        return False
    if kind == "shape":
        return thing.kind == "shape" and thing.shape == value
    if kind == "colour":
        if thing.kind == "shape":
            return thing.colour == value
        return any(p is not None and p.colour == value for p in (thing.head, thing.body, thing.accessory))
    want = _character_values(characters[value].figure)
    seen = _character_values(thing)
    return sum(want.get(k) != seen.get(k) for k in set(want) | set(seen)) <= 1


def prompt_text(kind: str, value: str, characters: Any) -> str:
    """The words that name the target in a prompt (a character by its caption)."""
    return characters[value].description if kind == "character" else value


def target_scenes(target: Target, n: int, characters: Any) -> list[Any]:
    """`n` held-out scenes with the target put into the first object."""
    from clif_core.sandbox.prompt_following import PROMPT_SETS
    from clif_core.sandbox.scene import Placed, Scene
    from clif_core.sandbox.world import fit, scene_for_seed

    sets = ["one_object", "two_objects"] + (["figures"] if target.kind == "colour" else [])
    scenes = []
    for i in range(n):
        scene = scene_for_seed(PROMPT_SEED_BASE + i, PROMPT_SETS[sets[i % len(sets)]])
        first = scene.objects[0]
        thing = first.thing
        if target.kind == "shape":
            thing = replace(thing, shape=target.value) if thing.kind == "shape" else thing
        elif target.kind == "colour":
            thing = replace(thing, colour=target.value) if thing.kind == "shape" else replace(
                thing, body=replace(thing.body, colour=target.value))
        else:
            thing = characters[target.value].figure
        scenes.append(Scene(scene.background, (Placed(thing, fit(thing, first.placement)), *scene.objects[1:])))
    return scenes


def other_scenes(target: Target, n: int, characters: Any) -> list[Any]:
    """`n` held-out scenes of every kind in which the target does not appear."""
    from clif_core.sandbox.prompt_following import PROMPT_SETS
    from clif_core.sandbox.world import scene_for_seed

    sets = list(PROMPT_SETS.values())
    scenes, seed = [], PROMPT_SEED_BASE + 500_000
    while len(scenes) < n:
        scene = scene_for_seed(seed, sets[seed % len(sets)])
        seed += 1
        if not any(shows(target.kind, target.value, o.thing, characters) for o in scene.objects):
            scenes.append(scene)
    return scenes


# ------------------------------------------------------------------------------------------------ scoring


@dataclass
class Images:
    target: np.ndarray  # uint8 [N, 64, 64, 3]
    other: np.ndarray


def score(target: Target, scenes_other: list[Any], images: Images, original: Optional[Images], oracle: Any,
          characters: Any) -> dict[str, list[float]]:
    """Per-image values of every metric (see the module docstring); drift only against an original."""
    from clif_core.sandbox.oracle import attribute_agreement, scene_correct

    nan = float("nan")
    out: dict[str, list[float]] = {}
    target_readings = oracle.read(images.target)
    out["target"] = [float(any(shows(target.kind, target.value, t, characters) for t in r.slots.values()))
                     for r in target_readings]
    out["alternative"] = [float(any(shows(target.kind, target.alternative, t, characters) for t in r.slots.values()))
                          if target.alternative else nan for r in target_readings]
    readings = oracle.read(images.other)
    attrs = []
    for scene, r in zip(scenes_other, readings):
        agree = {k: v for k, v in attribute_agreement(scene, r).items() if not k.startswith("detail")}
        counted = sum(v[1] for v in agree.values())
        attrs.append(sum(v[0] for v in agree.values()) / counted if counted else nan)
    out["other_attributes"] = attrs
    out["other_exact"] = [float(scene_correct(s, r)) for s, r in zip(scenes_other, readings)]
    if original is None:
        out["drift_pixels"] = out["drift_features"] = []
    else:
        a, b = original.other.astype(np.float64), images.other.astype(np.float64)
        out["drift_pixels"] = np.abs(a - b).mean(axis=(1, 2, 3)).tolist()
        fa, fb = oracle.features(original.other), oracle.features(images.other)
        out["drift_features"] = ((fa - fb).norm(dim=1) / fa.norm(dim=1).clamp(min=1e-8)).tolist()
    return out


def reference_distance(images: np.ndarray, oracle: Any) -> tuple[float, float]:
    """The drift scale of unrelated images: mean pixel and relative feature distance between consecutive
    other-prompt images of the original model (different prompts, different seeds)."""
    if len(images) < 2:
        return float("nan"), float("nan")
    a, b = images[:-1].astype(np.float64), images[1:].astype(np.float64)
    fa, fb = oracle.features(images[:-1]), oracle.features(images[1:])
    return float(np.abs(a - b).mean()), float(((fa - fb).norm(dim=1) / fa.norm(dim=1).clamp(min=1e-8)).mean())


# ------------------------------------------------------------------------------------------------ running


@dataclass
class EraseBenchConfig:
    out: Path
    size: str = "smoke"
    spec: Optional[Path] = None
    targets: str = DEFAULT_TARGETS
    seeds: int = 0  # 0: the size's prompt counts; else that many target and other prompts (one seed each)
    model: Optional[Path] = None
    vision: Optional[Path] = None  # unused by erasure; accepted so both benchmarks take the same options
    work: Optional[Path] = None
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    command: str = ""

    @property
    def dims(self) -> ErasureSize:
        if self.size not in SIZES:
            raise ClifError(f"benchmark size {self.size!r} is unknown; use one of {', '.join(SIZES)}")
        size = SIZES[self.size]
        return replace(size, target_prompts=self.seeds, other_prompts=self.seeds) if self.seeds else size

    def check(self) -> None:
        self.dims  # noqa: B018 - validates the size
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ClifError(f"unknown erase method(s) {bad}; choose among {', '.join(METHODS)}")
        if self.seeds < 0:
            raise ClifError(f"seeds is {self.seeds}; use a positive number (0: the size's)")


@dataclass
class TargetRun:
    target: Target
    images: dict[str, Images] = field(default_factory=dict)  # "original" and each method
    scores: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reference: tuple[float, float] = (float("nan"), float("nan"))


def _generate(base: Any, prompts: list[str], d: ErasureSize, seed: int, patch: Any = None) -> np.ndarray:
    from clif_core.concepts.apply import apply_concepts
    from clif_core.sandbox.prompt_following import generate

    applied = apply_concepts(base, [(patch, 1.0)]) if patch is not None else None
    try:
        return generate(base, prompts, seed=seed, steps=d.sample_steps, guidance=d.guidance)
    finally:
        if applied is not None:
            applied.remove()


def erase_target(target: Target, method: str, base: Any, characters: Any, config: EraseBenchConfig, work: Path,
                 reporter: Reporter = SILENT) -> Any:
    """One erasure run; returns the patch (a ConceptFile)."""
    from clif_core.erase.config import EraseConfig, EraseTarget
    from clif_core.erase.trainer import erase_concepts
    from clif_core.train.loop import LoopConfig

    d = config.dims
    name, params = _METHOD_CONFIG[method]
    alternative = prompt_text(target.kind, target.alternative, characters) if target.alternative else None
    cfg = EraseConfig(
        targets=[EraseTarget(prompt_text(target.kind, target.value, characters), alternative)], method=name,
        params=params, trajectories=d.trajectories, sample_steps=d.pool_steps,
        loop=LoopConfig(steps=d.steps, batch_size=d.batch, seed=config.seed, checkpoint_every=d.steps,
                        log_every=d.steps, preview_every=0))
    slug = f"{target.kind}-{target.value}"
    result = erase_concepts(base, cfg, work / slug / method, work / slug / f"{method}.safetensors",
                            reporter=reporter, overwrite=True)
    return result.patch


def run_target(target: Target, config: EraseBenchConfig, base: Any, oracle: Any, characters: Any, work: Path,
               reporter: Reporter) -> TargetRun:
    from clif_core.sandbox.scene import caption

    d = config.dims
    scenes_t = target_scenes(target, d.target_prompts, characters)
    scenes_o = other_scenes(target, d.other_prompts, characters)
    prompts_t = [caption(s, background=False) for s in scenes_t]
    prompts_o = [caption(s, background=False) for s in scenes_o]
    run = TargetRun(target)

    def images(patch: Any = None) -> Images:
        return Images(_generate(base, prompts_t, d, config.seed, patch), _generate(base, prompts_o, d, config.seed, patch))

    reporter.log(f"{target.label()}: sampling the original model")
    run.images["original"] = original = images()
    run.scores["original"] = score(target, scenes_o, original, None, oracle, characters)
    run.reference = reference_distance(original.other, oracle)
    for method in config.methods:
        reporter.log(f"{target.label()}: erasing with {method}")
        start = time.perf_counter()
        patch = erase_target(target, method, base, characters, config, work, reporter)
        run.seconds[method] = time.perf_counter() - start
        run.images[method] = erased = images(patch)
        run.scores[method] = score(target, scenes_o, erased, original, oracle, characters)
    return run


def summarise(runs: Sequence[TargetRun]) -> dict[str, dict[str, dict[str, Estimate]]]:
    """target label → method → metric → estimate (drift is not measured for the original itself)."""
    out: dict[str, dict[str, dict[str, Estimate]]] = {}
    for run in runs:
        out[run.target.label()] = {
            m: {k: bootstrap(values[k]) if values[k] else NOT_MEASURED for k, _ in METRICS}
            for m, values in run.scores.items()
        }
    return out


def run_erasure_bench(config: EraseBenchConfig, reporter: Reporter = SILENT) -> dict[str, Path]:
    """Run the benchmark; write OUT/erase.md, OUT/erase.png, OUT/erase.json; return their paths."""
    from clif_core.sandbox.characters import load_characters

    from .setup import load_bench_model, load_oracle

    config.check()
    started = time.perf_counter()
    characters = load_characters(config.spec)
    targets = parse_targets(config.targets, characters)
    model = load_bench_model(config.model, config.vision)
    oracle = load_oracle()
    work = config.work or config.out / f"work-erase-{config.size}"
    runs = []
    for i, target in enumerate(targets):
        reporter.progress(i, len(targets), None)
        runs.append(run_target(target, config, model.base, oracle, characters, work, reporter))
    reporter.progress(len(targets), len(targets), None)
    return _write(config, characters, model.note, runs, summarise(runs), time.perf_counter() - started)


def _write(config: EraseBenchConfig, characters: Any, model_note: str, runs: list[TargetRun],
           table: dict[str, dict[str, dict[str, Estimate]]], seconds: float) -> dict[str, Path]:
    from clif_core.fileio import write_text_atomic

    from ..sheets import labelled_grid
    from .report import finite_json, markdown_table, save_png

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    d = config.dims
    show = min(4, d.target_prompts, d.other_prompts)
    grid_rows = [(f"{run.target.label()}: {METHOD_TITLES[m]}", [*run.images[m].target[:show], *run.images[m].other[:show]])
                 for run in runs for m in ("original", *config.methods)]
    columns = [f"target {i + 1}" for i in range(show)] + [f"other {i + 1}" for i in range(show)]
    paths = {"grid": save_png(labelled_grid(grid_rows, columns, label_width=190), out / "erase.png")}
    rows = [(f"{label}: {METHOD_TITLES[m]}", est) for label, per in table.items() for m, est in per.items()]
    refs = "; ".join(f"{r.target.label()}: {r.reference[0]:.1f} px, {r.reference[1]:.2f} features" for r in runs)
    lines = [
        "# Erasure benchmark (sandbox)",
        "",
        f"Model: {model_note}",
        "",
        f"Command: `{config.command or 'clif bench erase'}`  ",
        f"Size: `{config.size}`: per target {d.target_prompts} target prompts and {d.other_prompts} other prompts "
        f"(one seed each, the same seeds for every model), {d.sample_steps} DDIM sampling steps, CFG {d.guidance}; "
        f"characters from {characters.source}.  ",
        f"Budget per method: {d.steps} steps × batch {d.batch} on the same x_t pool settings ({d.trajectories} "
        f"trajectories × {d.pool_steps} DDIM steps under the target prompt, seed {config.seed}); each method's "
        "default learning rate (docs/erasure.md).  ",
        f"Wall time: {seconds / 60:.1f} min.",
        "",
        "Each cell: mean over images [bootstrap 95% interval]; n/a where the metric does not apply.",
        "",
        markdown_table(rows, METRICS, first="target: model", digits=3),
        "",
        "Drift scale of unrelated images (the original model's consecutive other-prompt images, different prompts "
        f"and seeds): {refs}.",
        "",
        "Erasure seconds: " + "; ".join(
            f"{r.target.label()}: " + ", ".join(f"{m} {r.seconds[m]:.0f}" for m in config.methods) for r in runs) + ".",
        "",
        f"Grid (`erase.png`): per target and model, the first {show} target prompts, then the first {show} other "
        "prompts (same seeds in every row).",
    ]
    paths["table"] = write_text_atomic(out / "erase.md", "\n".join(lines) + "\n")
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "size": asdict(d), "seconds": seconds, "model": model_note,
        "table": {t: {m: {k: e.to_dict() for k, e in est.items()} for m, est in per.items()} for t, per in table.items()},
        "runs": [{"target": asdict(r.target), "scores": r.scores, "seconds": r.seconds, "reference": r.reference}
                 for r in runs],
    }
    paths["json"] = write_text_atomic(out / "erase.json", json.dumps(finite_json(record), indent=1) + "\n")
    return paths

