"""Robustness (b) of an erasure: is the target erased, or only dormant? Recovery attacks.

The sandbox renders `recovery_pictures` pictures of the target (a character's renders; a shape or a colour
on single objects of random colour / shape and texture). Each attack trains a new token `<rec>` on them with
the pack's own training code (`training.train_stages`), at the same budget (steps × batch) on the original
model and on each erased model (the patch merged into the weights while it trains and samples), then samples
the token alone; the oracle says how often the target comes back:

- textual inversion: the token only (`tokens`), on the plain pictures;
- CLIF training: the pack's two stages (`clif`) on an augmented set of the pictures (Global with two common
  objects that show no target of the run, Region where the target has parts, single), on the erased models
  only (the original draws what the token was trained on anyway; its TI row is the base rate).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from clif_core.progress import Reporter

from .erase_targets import PROMPT_SEED_BASE, produced, put_target, sample_images, shows
from .stats import NOT_MEASURED, Estimate, bootstrap
from .training import Recipe, build_sets, train_stages

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

ATTACKS = (("ti", "textual inversion"), ("clif", "CLIF training (stage 1 + 2)"))
_STAGES = {"ti": ("tokens", "plain"), "clif": ("clif", "augmented")}
TOKEN = "<rec>"
NEUTRAL_CLASS_WORD = "object"  # a shape's or colour's token starts here: a word the world's captions never use


@dataclass
class Recovery:
    """Per attack, per model ("original" or a method): 1 per image where the target came back."""

    target: Any
    produced: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.label(), "produced": self.produced, "seconds": self.seconds}


def target_pictures(target: Any, n: int, seed: int, characters: Any) -> Any:
    """A `Concept` of `n` sandbox renders showing the target, with exact masks."""
    from clif_core.concepts.spec import Concept
    from clif_core.sandbox.characters import character_concept
    from clif_core.sandbox.render import render_scene
    from clif_core.sandbox.scene import Placed, Scene
    from clif_core.sandbox.world import WorldConfig, fit, scene_for_seed


    if target.kind == "character":
        return character_concept(characters[target.value], TOKEN, n=n, seed=seed)
    renders = []
    for i in range(n):
        scene = scene_for_seed(PROMPT_SEED_BASE + 900_000 + seed * 1000 + i, WorldConfig(p_two=0.0, p_figure=0.0))
        first = scene.objects[0]
        thing = put_target(target, first.thing, characters)
        renders.append(render_scene(Scene(scene.background, (Placed(thing, fit(thing, first.placement)),))))
    return Concept(name=target.slug(), token=TOKEN, class_word=NEUTRAL_CLASS_WORD, images=[r.pil() for r in renders],
                   masks=[r.masks[0] for r in renders],
                   sources=[f"sandbox render of {target.label()} {i} (seed {seed})" for i in range(n)])


def common_words(avoid: Sequence[Any], characters: Any, n: int = 2) -> list[str]:
    """`n` "colour shape" phrases of the world whose objects show none of `avoid`, spread over the vocabulary."""
    from clif_core.sandbox.attributes import COLOUR_NAMES, SHAPES
    from clif_core.sandbox.scene import Shape


    words = []
    for k in range(len(SHAPES) * len(COLOUR_NAMES)):
        shape, colour = SHAPES[k % len(SHAPES)], COLOUR_NAMES[(k * 3) % len(COLOUR_NAMES)]
        if not any(shows(t.kind, t.value, Shape(shape, colour), characters) for t in avoid):
            words.append(f"{colour} {shape}")
        if len(words) == n:
            break
    return words


@contextlib.contextmanager
def _model(base: BaseModel, patch: Any) -> Iterator[Any]:
    """The original model (`patch` None) or the erased one: the patch merged into the weights."""
    from clif_core.erase.patch import merged

    if patch is None:
        yield base
    else:
        with merged(base, patch):
            yield base


def recover(target: Any, erasure: Any, patches: dict[str, Any], config: Any, model: Any, oracle: Any,
            characters: Any, work: Path, cache: Path, reporter: Reporter) -> Recovery:
    """Run every attack on the original model (textual inversion only) and on each method's erased model;
    training sets and runs go to `work`, the common objects (drawn by the original model) to `cache`."""
    import time

    from clif_core.augment.common_concepts import resolve_common
    from clif_core.sample.config import SampleConfig
    from clif_core.sample.sampler import make_generate


    d, base = config.dims, model.base
    concept = target_pictures(target, d.recovery_pictures, config.seed, characters)
    generate = make_generate(base, SampleConfig(prompt="", steps=d.sample_steps, cfg=d.guidance))
    common = resolve_common(common_words(erasure.targets, characters), generate=generate,
                            fingerprint=base.fingerprint, cache_dir=cache, n=2,
                            seed=config.seed)
    n_global, n_region, n_single, n_plain = d.recovery_sets
    sets = build_sets([concept], work / "datasets", (n_global, n_region if concept.parts else 0, 0, n_single), n_plain,
                      config.seed, common, {"plain", "augmented"})
    recipe = Recipe(steps=d.recovery_steps, batch=d.recovery_batch, seed=config.seed)
    prompts = [TOKEN] * d.recovery_prompts
    result = Recovery(target)
    for attack, _ in ATTACKS:
        models = ([] if attack == "clif" else ["original"]) + list(patches)
        for name in models:
            reporter.log(f"{target.label()}: {attack} on the {name} model")
            start = time.perf_counter()
            stages, kind = _STAGES[attack]
            with _model(base, patches.get(name)):
                trained = train_stages(stages, base, model.vision, sets[kind], work / attack / name, recipe, reporter)
                images = sample_images(base, prompts, d.sample_steps, d.guidance, config.seed, trained)
            result.seconds.setdefault(attack, {})[name] = time.perf_counter() - start
            result.produced.setdefault(attack, {})[name] = produced(target, target.value, images, oracle, characters)
    return result


def recovery_table(recovery: Recovery, erasure: Any, methods: Sequence[str]) -> list[tuple[str, dict[str, Estimate]]]:
    """Rows "target: attack" with one estimate per model (n/a where the attack was not run on it)."""
    title = dict(ATTACKS)
    rows = []
    for attack, _ in ATTACKS:
        per = recovery.produced.get(attack, {})
        rows.append((f"{erasure.row_label(recovery.target)}: {title[attack]}",
                     {m: bootstrap(per[m]) if m in per else NOT_MEASURED for m in ("original", *methods)}))
    return rows
