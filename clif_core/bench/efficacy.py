"""`clif bench efficacy`: CLIF against its baselines and ablations on confusable sandbox character pairs.

Per pair: 5 renders per character → the training sets (plain single pictures, the full augmented set and
the three ablated sets) → every method trained at the same budget → the same prompts and seeds sampled
with each method's concept file → the oracle reads every image → per-image scores → bootstrap 95%
intervals over all images of all pairs. The character spec and the pair list are inputs, so the benchmark
runs on characters the oracle and the base model never saw by name.

Equal budget: every method takes the same number of optimizer steps at the same batch size; CLIF's stage 1
and stage 2 steps count together (stage 1 gets `stage1_share` of them). The core comparison (CORE_METHODS)
is trained with `train_seeds` training seeds per pair and its intervals come from a two-level bootstrap over
training runs and images; the other methods are trained once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from clif_core.errors import ClifError
from clif_core.progress import SILENT, Reporter

from .diagnostics import diagnostics_lines, stage1_measures, tower_separation
from .stats import Estimate, bootstrap_runs
from .training import Rates, Recipe, build_sets, sandbox_templates, train_stages

METHODS = ("textual-inversion", "decoder-plain", "decoder-augmented", "clif", "clif-no-global", "clif-no-region",
           "clif-no-mix", "decoder-isolated", "clif-isolated")
CORE_METHODS = ("decoder-plain", "decoder-augmented", "clif")  # trained with every training seed
METHOD_TITLES = {
    "textual-inversion": "textual inversion only (tokens, plain pictures)",
    "decoder-plain": "decoder-only, plain pictures (LoRA + tokens)",
    "decoder-augmented": "decoder-only, augmented set (LoRA + tokens)",
    "clif": "CLIF full (stage 1 + 2)",
    "clif-no-global": "CLIF without Global",
    "clif-no-region": "CLIF without Region",
    "clif-no-mix": "CLIF without Mix",
    "decoder-isolated": "decoder-only, one file per character, isolated",
    "clif-isolated": "CLIF, one file per character, isolated",
}
# Isolation at sampling binds one concept file to one region, so these methods train a file per character
# (each on its own augmented set, half the budget each: the pair's total stays the others'); a prompt with
# both characters is sampled with a left/right layout, each file's LoRA and token only in its half.
ISOLATED = {"decoder-isolated": "decoder", "clif-isolated": "clif"}
# method → (training set, stages): which data set it trains on and whether stage 1 runs first
_PLAN = {
    "textual-inversion": ("plain", "tokens"),
    "decoder-plain": ("plain", "decoder"),
    "decoder-augmented": ("augmented", "decoder"),
    "clif": ("augmented", "clif"),
    "clif-no-global": ("no-global", "clif"),
    "clif-no-region": ("no-region", "clif"),
    "clif-no-mix": ("no-mix", "clif"),
    "decoder-isolated": ("augmented", "decoder"),
    "clif-isolated": ("augmented", "clif"),
}
METRICS = (
    ("identity", "identity accuracy ↑"),
    ("leakage", "attribute leakage ↓"),
    ("attendance", "concept attendance ↑"),
    ("fidelity", "single-concept fidelity ↑"),
)


@dataclass(frozen=True)
class EfficacySize:
    """How big a run is. `budget_steps` × `batch` is every method's training budget."""

    pairs: int  # pairs taken from the spec when none are named
    budget_steps: int
    batch: int
    seeds: int  # per prompt
    sample_steps: int
    n_global: int
    n_region: int
    n_mix: int
    n_single: int
    n_plain: int  # samples of the plain set (each character's pictures, cut out and centred)
    common_images: int = 2
    common_steps: int = 12
    images: int = 5  # training pictures per character
    train_seeds: int = 1  # training runs per pair of each core method (CORE_METHODS)


SIZES = {
    # `test` exists for the test suite only (seconds on the miniature model); the CLI offers smoke and full
    "test": EfficacySize(pairs=1, budget_steps=4, batch=2, seeds=2, sample_steps=2, n_global=2, n_region=2, n_mix=2,
                         n_single=2, n_plain=4, common_images=1, common_steps=2),
    "smoke": EfficacySize(pairs=2, budget_steps=40, batch=8, seeds=4, sample_steps=12, n_global=8, n_region=8,
                          n_mix=8, n_single=4, n_plain=10, train_seeds=1),
    "full": EfficacySize(pairs=4, budget_steps=300, batch=8, seeds=16, sample_steps=20, n_global=24, n_region=24,
                         n_mix=16, n_single=8, n_plain=20, train_seeds=3),
}


@dataclass
class EfficacyConfig:
    out: Path
    size: str = "smoke"
    spec: Optional[Path] = None  # character spec file (default: the shipped one)
    pairs: Optional[list[tuple[str, str]]] = None  # default: the spec's first `size.pairs` pairs
    seeds: int = 0  # 0: the size's
    train_seeds: int = 0  # training runs of each core method per pair (0: the size's: smoke 1, full 3)
    model: Optional[Path] = None  # diffusers folder (default: the bundled sandbox model)
    vision: Optional[Path] = None
    work: Optional[Path] = None  # run folders, data sets, caches (default: OUT/work-efficacy-SIZE)
    methods: tuple[str, ...] = METHODS
    seed: int = 0
    rates: Rates = Rates()  # learning rates and CLIF's stage split
    cfg: float = 4.0
    common_words: tuple[str, ...] = ("red circle", "blue square")
    command: str = ""  # the command line, for the report

    @property
    def dims(self) -> EfficacySize:
        if self.size not in SIZES:
            raise ClifError(f"benchmark size {self.size!r} is unknown; use one of {', '.join(SIZES)}")
        return SIZES[self.size]

    def check(self) -> None:
        dims = self.dims
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ClifError(f"unknown method(s) {bad}; choose among {', '.join(METHODS)}")
        if self.seeds < 0:
            raise ClifError(f"seeds is {self.seeds}; use a positive number (0: the size's {dims.seeds})")
        if self.train_seeds < 0:
            raise ClifError(f"train_seeds is {self.train_seeds}; use a positive number (0: the size's "
                            f"{dims.train_seeds})")
        self.recipe(0).check()

    def runs_of(self, method: str) -> int:
        """Training runs per pair of `method`: every training seed for a core method, one for the others."""
        return (self.train_seeds or self.dims.train_seeds) if method in CORE_METHODS else 1

    def recipe(self, run: int) -> Recipe:
        """The training recipe of training run `run` (its seed is `seed + run`)."""
        d = self.dims
        return Recipe(steps=d.budget_steps, batch=d.batch, seed=self.seed + run, rates=self.rates)


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompt:
    kind: str  # "pair" | "single" | "common"
    text: str
    expected: dict  # slot → character name (concept slots only)


def pair_prompts(a: str, b: str, templates: Any, common_word: str) -> list[Prompt]:
    """Both concepts in both orders, each alone, each beside a common object, in the training captions' words."""
    t = templates

    def tok(n: str) -> str:
        return t.concept.format(token=f"<{n}>", class_word="figure")

    common = t.common.format(word=common_word)
    two = lambda first, second: t.pair_left_right.format(first=first, second=second)  # noqa: E731
    return [
        Prompt("pair", two(tok(a), tok(b)), {"left": a, "right": b}),
        Prompt("pair", two(tok(b), tok(a)), {"left": b, "right": a}),
        Prompt("single", t.single.format(first=tok(a)), {"center": a}),
        Prompt("single", t.single.format(first=tok(b)), {"center": b}),
        Prompt("common", two(tok(a), common), {"left": a}),
        Prompt("common", two(tok(b), common), {"left": b}),
    ]



# ------------------------------------------------------------------------------------------------ scoring


def _values(thing: Any) -> dict[str, str]:
    from clif_core.sandbox.oracle_heads import thing_values

    return thing_values(thing)


def score_image(reading: Any, prompt: Prompt, characters: Any) -> dict[str, float]:
    """Per-image scores (NaN where a metric does not apply to this prompt kind).

    identity: share of the prompt's concept slots that the oracle identifies as the asked character
      (`CharacterSet.closest`: at most one misread attribute, no tie).
    leakage: pair prompts; share of concept slots holding a figure in which some attribute that tells the
      two characters apart reads as the other character's value (a's body drawn in b's colour).
    attendance: pair prompts; 1 when both characters are identified somewhere in the image.
    fidelity: single prompts; share of the character's attributes (part shapes, colours, textures,
      accessory, detail) read back in the centre slot.
    """
    nan = math.nan
    names = {slot: characters.closest(reading.slots[slot]) for slot in reading.slots}
    identity = [float(names[slot] == want) for slot, want in prompt.expected.items()]
    scores = {"identity": sum(identity) / len(identity), "leakage": nan, "attendance": nan, "fidelity": nan}
    if prompt.kind == "pair":
        a, b = prompt.expected["left"], prompt.expected["right"]
        leaks = []
        for slot, want in prompt.expected.items():
            seen = reading.slots[slot]
            if seen is None or seen.kind != "figure":
                continue
            other = b if want == a else a
            mine, theirs, got = _values(characters[want].figure), _values(characters[other].figure), _values(seen)
            differing = [k for k in theirs if theirs[k] not in ("none",) and mine.get(k) != theirs[k]]
            leaks.append(float(any(got.get(k) == theirs[k] for k in differing)))
        scores["leakage"] = sum(leaks) / len(leaks) if leaks else nan
        scores["attendance"] = float({a, b} <= set(names.values()))
    if prompt.kind == "single":
        want = _values(characters[prompt.expected["center"]].figure)
        got = _values(reading.slots["center"])
        scores["fidelity"] = sum(got.get(k) == v for k, v in want.items()) / len(want)
    return scores


# ------------------------------------------------------------------------------------------------ running


@dataclass
class PairRun:
    """What one pair produced: per method, per training run, per prompt, the scores; the first run's images."""

    pair: tuple[str, str]
    prompts: list[Prompt]
    pictures: list  # training pictures, a's then b's
    images: dict[str, list[list[Any]]] = field(default_factory=dict)  # method → per prompt → PIL images (run 0)
    scores: dict[str, list[list[list[dict]]]] = field(default_factory=dict)  # method → run → prompt → image
    seconds: dict[str, float] = field(default_factory=dict)  # method → training seconds, all its runs
    stage1: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # method → per run (diagnostics.py)
    separation: float = float("nan")  # the vision tower's own separation of the pair (diagnostics.py)


def run_dir_of(pair_dir: Path, method: str, run: int) -> Path:
    """Training run `run` of `method` (run 0 keeps the folder name of single-seed benchmarks, so they resume)."""
    return pair_dir / "runs" / (method if run == 0 else f"{method}-seed{run}")


def run_pair(pair: tuple[str, str], config: EfficacyConfig, model: Any, oracle: Any, characters: Any, work: Path,
             reporter: Reporter) -> PairRun:
    from clif_core.augment.common_concepts import resolve_common
    from clif_core.sample.config import SampleConfig
    from clif_core.sample.sampler import make_generate, sample
    from clif_core.sandbox.characters import character_concept

    d = config.dims
    seeds = config.seeds or d.seeds
    a, b = pair
    base = model.base
    concepts = [character_concept(characters[n], f"<{n}>", n=d.images, seed=config.seed) for n in pair]
    generate = make_generate(base, SampleConfig(prompt="", steps=d.common_steps, cfg=config.cfg))
    common = resolve_common(list(config.common_words), generate=generate, fingerprint=base.fingerprint,
                            cache_dir=work.parent / "common_cache", n=d.common_images, seed=config.seed)
    pair_dir = work / f"{a}-{b}"
    datasets = build_sets(concepts, pair_dir / "datasets", (d.n_global, d.n_region, d.n_mix, d.n_single), d.n_plain,
                          config.seed, common, {_PLAN[m][0] for m in config.methods})
    prompts = pair_prompts(a, b, sandbox_templates(), config.common_words[0])
    run = PairRun(pair, prompts, [im for c in concepts for im in c.images])
    for method in config.methods:
        run.scores[method], run.seconds[method] = [], 0.0
        for k in range(config.runs_of(method)):
            reporter.log(f"{a}/{b}: training {method} (training run {k + 1} of {config.runs_of(method)})")
            start = time.perf_counter()
            files = _train_files(method, k, concepts, datasets, pair_dir, config, model, common, reporter)
            run.seconds[method] += time.perf_counter() - start
            measured = stage1_measures(run_dir_of(pair_dir, method, k))
            if measured is not None:
                run.stage1.setdefault(method, []).append(measured)
            reporter.log(f"{a}/{b}: sampling {method} ({len(prompts)} prompts × {seeds} seeds)")
            per_prompt = []
            for prompt in prompts:
                images = sample(base, *_sampling(prompt, files, config, seeds)).images
                if k == 0:
                    run.images.setdefault(method, []).append(images)
                per_prompt.append([score_image(r, prompt, characters) for r in oracle.read(images)])
            run.scores[method].append(per_prompt)
    return run


def _train_files(method: str, k: int, concepts: Sequence[Any], datasets: dict[str, Path], pair_dir: Path,
                 config: EfficacyConfig, model: Any, common: Sequence[Any], reporter: Reporter) -> dict:
    """Training run `k` of `method`: {None: one file of both characters}, or for an ISOLATED method {name: that
    character's own file}, each trained on its own augmented set (Global, Region and single samples: Mix
    composes two concepts) with half the budget."""
    data, stages = _PLAN[method]
    recipe = config.recipe(k)
    if method not in ISOLATED:
        return {None: train_stages(stages, model.base, model.vision, datasets[data], run_dir_of(pair_dir, method, k),
                                   recipe, reporter)}
    d, files = config.dims, {}
    for concept in concepts:
        own = build_sets([concept], pair_dir / "datasets" / f"{concept.name}-alone", (d.n_global, d.n_region, 0,
                         d.n_single), d.n_plain, config.seed, common, {"augmented"})["augmented"]  # Mix needs two
        files[concept.name] = train_stages(stages, model.base, model.vision, own,
                                           run_dir_of(pair_dir, f"{method}-{concept.name}", k),
                                           replace(recipe, steps=max(2, recipe.steps // 2)), reporter)
    return files


def _sampling(prompt: Prompt, files: dict, config: EfficacyConfig, seeds: int) -> tuple[Any, list]:
    """(SampleConfig, concept uses) for `prompt`: the prompt with the method's file, or for one file per
    character a left/right layout whose regions each hold one character's file and placeholder (isolated;
    a single-character prompt is sampled plainly with that character's file)."""
    from clif_core.sample.config import SampleConfig
    from clif_core.sample.regional import layout_regions
    from clif_core.sample.sampler import ConceptUse

    settings = dict(seed=config.seed, batch=seeds, steps=config.dims.sample_steps, cfg=config.cfg)
    if None in files:
        return SampleConfig(prompt=prompt.text, **settings), [ConceptUse(files[None])]
    if prompt.kind == "single":
        return SampleConfig(prompt=prompt.text, **settings), [ConceptUse(files[prompt.expected["center"]])]
    t = sandbox_templates()
    left, right = prompt.expected["left"], prompt.expected.get("right")
    second = f"<{right}>" if right else t.common.format(word=config.common_words[0])
    scene = t.pair_left_right.format(first="a figure", second="a figure" if right else second)
    regions = layout_regions("left_right", [t.single.format(first=f"<{left}>"), t.single.format(first=second)])
    uses = [ConceptUse(files[left], region=1)] + ([ConceptUse(files[right], region=2)] if right else [])
    return SampleConfig(prompt=scene, regions=regions, **settings), uses


def summarise(runs: Sequence[PairRun], methods: Sequence[str]) -> dict[str, dict[str, Estimate]]:
    """Per method, per metric: the two-level bootstrap estimate (`bootstrap_runs`) over every image of every
    prompt, with the pairs as strata and each pair's training runs as the runs."""
    out = {}
    for method in methods:
        out[method] = {
            key: bootstrap_runs([[[s[key] for prompt_scores in training_run for s in prompt_scores]
                                  for training_run in run.scores[method]] for run in runs])
            for key, _ in METRICS}
    return out


def run_efficacy(config: EfficacyConfig, reporter: Reporter = SILENT) -> dict[str, Path]:
    """Run the benchmark; write OUT/efficacy.md, OUT/efficacy.png, OUT/efficacy.json; return their paths."""
    import torch

    from clif_core.sandbox.characters import load_characters
    from clif_core.train.vision import load_vision_tower

    from .setup import load_bench_model, load_oracle

    config.check()
    started = time.perf_counter()
    characters = load_characters(config.spec)
    pairs = config.pairs or list(characters.pairs[: config.dims.pairs])
    if not pairs:
        raise ClifError(f"{characters.source} lists no pairs; add \"pairs\" to the spec or pass --pairs a/b,c/d")
    for pair in pairs:
        for name in pair:
            characters[name]  # noqa: B018 - raises ClifError naming the spec for an unknown name
    model = load_bench_model(config.model, config.vision)
    oracle = load_oracle()
    work = config.work or config.out / f"work-efficacy-{config.size}"
    tower = load_vision_tower(model.vision, model.base.device, torch.float32)  # for the diagnostics only
    runs = []
    for i, pair in enumerate(pairs):
        reporter.progress(i, len(pairs), None)
        runs.append(run_pair(tuple(pair), config, model, oracle, characters, work / "pairs", reporter))
        runs[-1].separation = tower_separation(tower, characters, pair)
    reporter.progress(len(pairs), len(pairs), None)
    table = summarise(runs, config.methods)
    seconds = time.perf_counter() - started
    return _write(config, characters, model, runs, table, seconds)


def _write(config: EfficacyConfig, characters: Any, model: Any, runs: list[PairRun],
           table: dict[str, dict[str, Estimate]], seconds: float) -> dict[str, Path]:
    """The report files (results JSON, markdown, grids). Over 60 lines: the report's layout written top to
    bottom, one section after the other."""
    from clif_core.fileio import write_text_atomic

    from ..sheets import labelled_grid
    from .report import finite_json, markdown_table, save_png

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    d = config.dims
    seeds = config.seeds or d.seeds
    s1, s2 = config.recipe(0).stage_steps()
    first = runs[0]
    show = min(2, seeds)
    grid_rows = [("training pictures (" + " | ".join(first.pair) + ")", first.pictures)]
    grid_rows += [(METHOD_TITLES[m], [im for images in first.images[m] for im in images[:show]])
                  for m in config.methods]
    columns = [p.text.replace("<", "").replace(">", "") for p in first.prompts for _ in range(show)]
    paths = {"grid": save_png(labelled_grid(grid_rows, columns, label_width=170), out / "efficacy.png")}
    rows = [(METHOD_TITLES[m], table[m]) for m in config.methods]
    n_images = sum(len(p) * seeds for p in (r.prompts for r in runs))
    lines = [
        "# Efficacy benchmark (sandbox)",
        "",
        f"Model: {model.note}  ",
        f"Model fingerprint: `{model.base.fingerprint}`",
        "",
        f"Command: `{config.command or 'clif bench efficacy'}`  ",
        f"Size: `{config.size}`: {len(runs)} pairs ({', '.join('/'.join(r.pair) for r in runs)}) from "
        f"{characters.source}, {d.images} training pictures per character, {seeds} seeds per prompt, "
        f"{n_images} images per method and training run, {d.sample_steps} sampling steps (Euler, CFG {config.cfg}).  ",
        f"Budget per method: {d.budget_steps} optimizer steps × batch {d.batch} (CLIF: {s1} stage-1 + {s2} "
        f"stage-2 steps).  ",
        "One file per character (the isolated rows): each trained on its own augmented set without Mix, with "
        "half the budget; prompts with both characters sampled with a left/right layout, each file's LoRA and "
        "placeholder only in its half.  ",
        f"Training runs per pair: {config.runs_of(CORE_METHODS[0])} (training seeds {config.seed}.."
        f"{config.seed + config.runs_of(CORE_METHODS[0]) - 1}) for {', '.join(CORE_METHODS)}; 1 for the others.  ",
        f"Wall time: {seconds / 60:.1f} min.",
        "",
        "Each cell: mean over images [95% interval of a two-level bootstrap: training runs within each pair, then "
        "images within each run]; n/a where no image qualifies.",
        "",
        markdown_table(rows, METRICS),
        "",
        "Training seconds per method, summed over pairs: "
        + ", ".join(f"{m} {sum(r.seconds[m] for r in runs):.0f}" for m in config.methods) + ".",
        "",
        f"Grid (`efficacy.png`): pair {'/'.join(first.pair)}; first row the training pictures, then per method "
        f"the first {show} seeds of each prompt.",
        "",
        *diagnostics_lines([r.pair for r in runs], [r.separation for r in runs], [r.stage1 for r in runs]),
    ]
    paths["table"] = write_text_atomic(out / "efficacy.md", "\n".join(lines) + "\n")
    record = {
        "config": {**asdict(config), "out": str(config.out), "spec": str(config.spec or characters.source),
                   "model": str(config.model or ""), "vision": str(config.vision or ""),
                   "work": str(config.work or "")},
        "size": asdict(d), "training_runs": {m: config.runs_of(m) for m in config.methods}, "seconds": seconds, "model": model.note,
        "fingerprint": model.base.fingerprint,
        "table": {m: {k: e.to_dict() for k, e in est.items()} for m, est in table.items()},
        "pairs": [{"pair": list(r.pair), "prompts": [p.text for p in r.prompts], "scores": r.scores,
                   "training_seconds": r.seconds, "tower_separation": r.separation, "stage1": r.stage1}
                  for r in runs],
    }
    paths["json"] = write_text_atomic(out / "efficacy.json", json.dumps(finite_json(record), indent=1, default=str) + "\n")
    return paths
