"""How the benchmarks train concepts: the training sets they build and the three recipes they run.

One implementation for both benchmarks: `clif bench efficacy` trains its methods with it, and `clif bench
erase` uses it for the recovery attacks (textual inversion and CLIF training on an erased model). Every
recipe runs the pack's own training code (`clif_core.train`) at a budget of `steps` × `batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clif_core.errors import ClifError
from clif_core.progress import SILENT, Reporter

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

STAGES = ("tokens", "decoder", "clif")  # textual inversion, decoder-only (stage 2 alone), CLIF (stage 1 + 2)
SET_KINDS = ("plain", "augmented", "no-global", "no-region", "no-mix")


@dataclass(frozen=True)
class Rates:
    """Learning rates of the benchmark recipes (the sandbox model is small, as in `clif demo`) and CLIF's
    split of the budget: stage 1 gets `stage1_share` of the steps."""

    stage1_share: float = 0.25
    lr: float = 1e-3  # UNet LoRA
    token_lr: float = 1e-3  # concept tokens in stage 2
    ti_token_lr: float = 5e-3  # concept tokens when they are all that trains (textual inversion)
    stage1_lr: float = 5e-3


@dataclass(frozen=True)
class Recipe:
    """The budget (`steps` optimizer steps × `batch`) of one training run, its seed and its rates.

    CLIF's stage 1 and stage 2 steps count together."""

    steps: int
    batch: int
    seed: int = 0
    rates: Rates = Rates()

    def check(self) -> None:
        if self.steps < 2 or self.batch < 1:
            raise ClifError(f"training budget {self.steps} steps × batch {self.batch}: give at least 2 steps "
                            "(CLIF splits them between its two stages) and a batch of at least 1")
        if not 0 < self.rates.stage1_share < 1:
            raise ClifError(f"stage1_share {self.rates.stage1_share} must be between 0 and 1 (CLIF runs both "
                            "stages)")

    def stage_steps(self) -> tuple[int, int]:
        first = min(self.steps - 1, max(1, round(self.steps * self.rates.stage1_share)))
        return first, self.steps - first


def sandbox_templates() -> Any:
    """Captions in the sandbox world's own words ("X on the left and Y on the right"), which the base model
    was pretrained on, instead of the augmenter's "a photo of ..." default."""
    from clif_core.augment.compose import CaptionTemplates

    return CaptionTemplates(pair_left_right="{first} on the left and {second} on the right",
                            pair_top_bottom="{first} at the top and {second} at the bottom", single="{first}",
                            common="a {word}")


def build_sets(concepts: Sequence[Any], root: Path, counts: tuple[int, int, int, int], n_plain: int, seed: int,
               common: Sequence[Any], kinds: set[str]) -> dict[str, Path]:
    """The training sets `kinds` (of SET_KINDS) in `root/<kind>`: "plain" is each concept's pictures cut out
    and centred (`n_plain` samples, the augmenter's single kind), "augmented" the Global / Region / Mix /
    single set of `counts`, "no-X" the same with that kind's count 0. Existing sets with the same inputs
    are reused."""
    from clif_core.augment.compose import AugmentConfig
    from clif_core.augment.dataset import build_dataset
    from clif_core.augment.fallback import FallbackSegmenter

    n_global, n_region, n_mix, n_single = counts
    full = AugmentConfig(resolution=64, n_global=n_global, n_region=n_region, n_mix=n_mix, n_single=n_single,
                         n_parts=3, templates=sandbox_templates(), seed=seed)
    variants = {
        "plain": replace(full, n_global=0, n_region=0, n_mix=0, n_single=n_plain),
        "augmented": full,
        "no-global": replace(full, n_global=0),
        "no-region": replace(full, n_region=0),
        "no-mix": replace(full, n_mix=0),
    }
    return {kind: build_dataset(concepts, root / kind, variants[kind], FallbackSegmenter(),
                                common=common if kind != "plain" else (), reporter=SILENT, overwrite=True, reuse=True)
            for kind in sorted(kinds)}


def train_stages(stages: str, base: BaseModel, vision: Path, dataset: Path, run_dir: Path, recipe: Recipe,
                 reporter: Reporter = SILENT) -> Any:
    """Train with one recipe of STAGES at `recipe`'s budget; returns the concept file.

    "tokens" is textual inversion: the decoder stage with the LoRA's learning rate 0 (peft starts LoRA B at
    zero, so the LoRA adds exactly nothing and only the token rows learn, at the same compute per step)."""
    from clif_core.train.both_stages import train_concepts
    from clif_core.train.contrastive import ContrastiveConfig
    from clif_core.train.decoder import DecoderConfig, train_decoder
    from clif_core.training.loop import LoopConfig

    if stages not in STAGES:
        raise ClifError(f"unknown training recipe {stages!r}; use one of {', '.join(STAGES)}")
    recipe.check()

    def loop(steps: int) -> LoopConfig:
        return LoopConfig(steps=steps, batch_size=recipe.batch, seed=recipe.seed, checkpoint_every=max(steps, 1),
                          log_every=max(steps, 1))

    rates = recipe.rates
    if stages == "clif":
        s1, s2 = recipe.stage_steps()
        return train_concepts(base, dataset, vision, run_dir, ContrastiveConfig(lr=rates.stage1_lr, loop=loop(s1)),
                              DecoderConfig(lr=rates.lr, token_lr=rates.token_lr, preview_steps=0, loop=loop(s2)),
                              reporter=reporter).file
    lr, token_lr = (0.0, rates.ti_token_lr) if stages == "tokens" else (rates.lr, rates.token_lr)
    return train_decoder(base, dataset, run_dir, DecoderConfig(lr=lr, token_lr=token_lr, preview_steps=0,
                                                               loop=loop(recipe.steps)), reporter=reporter).file
