"""One source of truth for every setting a user can change: its default, limits, choices and help text.

A settings dataclass declares each user-facing field from an `Options` table (`TABLE.field("name")`), so the
field's default and its `metadata["option"]` (an `Option`) are one object; the `clif` commands
(`add_option`) and the ComfyUI nodes (nodes/widgets.py) build their flags and widgets from the same table, so
the three cannot drift apart (tests/test_options.py checks it).

The tables of the trainers' and the augmentation's settings are here rather than beside their dataclasses:
ComfyUI builds every node's schema at start-up, and importing the trainers there (torch, diffusers,
scikit-image) would cost seconds. This module imports nothing heavy beyond `clif_core.validation`. The
sampler's table is in `clif_core.sample.config`, which is as light.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterator, Optional

from clif_core.validation import MAX_GUIDANCE, cli_float, cli_int

OPTION = "option"
"""The key of a dataclass field's metadata that holds its `Option` (or, for a nested config, its `Options`)."""

MAX_SEED = 2**63 - 1
"""Largest seed anywhere (torch generators take 64-bit seeds; the `clif` commands always accepted this)."""


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting. `kind` is int / float / bool / str (default: the type of `default`); a tuple default is
    shown to users as comma-separated text. `step` is a widget's increment; `widget_default` is what a
    widget shows where the setting's default is None ("automatic"), as a widget cannot be empty."""

    default: Any
    help: str = ""
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple[str, ...]] = None
    step: Optional[float] = None
    kind: Optional[type] = None
    widget_default: Any = None

    @property
    def type(self) -> type:
        if self.kind is not None:
            return self.kind
        return str if isinstance(self.default, tuple) else type(self.default)

    @property
    def shown_default(self) -> Any:
        """The default as a flag or widget holds it: a tuple as comma-separated text."""
        return ",".join(self.default) if isinstance(self.default, tuple) else self.default

    def field(self) -> Any:
        return dataclasses.field(default=self.default, metadata={OPTION: self})

    def cli_type(self) -> Optional[Callable[[str], Any]]:
        """The argparse `type=` that refuses values outside the limits (None for text and choices)."""
        if self.choices or self.type not in (int, float):
            return None
        return (cli_int if self.type is int else cli_float)(self.min, self.max)


def opt(default: Any, help: str, min: Optional[float] = None, max: Optional[float] = None, **kw: Any) -> Option:
    return Option(default, help, min, max, **kw)


class Options:
    """A named table of options of one settings dataclass; an entry may be a nested table (a nested config,
    such as the training loop inside a stage's settings). `TABLE["loop.steps"]` reaches into a nested one."""

    def __init__(self, name: str, **entries: "Option | Options"):
        self.name = name
        self.entries = dict(entries)

    def __getitem__(self, path: str) -> Any:
        head, _, rest = path.partition(".")
        entry = self.entries[head]
        return entry[rest] if rest else entry

    def __contains__(self, path: str) -> bool:
        try:
            self[path]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def defaults(self) -> dict[str, Any]:
        """Keyword arguments for the dataclass: every plain entry's default (nested tables are left out)."""
        return {k: e.default for k, e in self.entries.items() if isinstance(e, Option)}

    def derive(self, name: str, **changes: Any) -> "Options":
        """This table with other defaults (`steps=1000`) or other option attributes (`steps={"max": 10}`)."""
        entries = dict(self.entries)
        for key, change in changes.items():
            current = entries[key]
            entries[key] = dataclasses.replace(current, **(change if isinstance(change, dict) else
                                                           {"default": change}))
        return Options(name, **entries)

    def field(self, name: str, factory: Optional[Callable[..., Any]] = None) -> Any:
        """The dataclass field of entry `name`; a nested table needs the nested dataclass as `factory`."""
        entry = self.entries[name]
        if isinstance(entry, Option):
            return entry.field()
        if factory is None:
            raise TypeError(f"{self.name}.{name} is a nested table: give its dataclass as factory")
        return dataclasses.field(default_factory=lambda: factory(**entry.defaults()), metadata={OPTION: entry})


def option_of(cls: Any, path: str) -> Any:
    """The `Option` a dataclass declares for a (dotted) field, read from the field's metadata."""
    head, _, rest = path.partition(".")
    entry = {f.name: f for f in dataclasses.fields(cls)}[head].metadata[OPTION]
    return entry[rest] if rest else entry


def configure(config: Any, values: dict[str, Any]) -> Any:
    """A copy of settings dataclass `config` with `values` set by (dotted) field name, e.g. {"lr": 1e-4,
    "loop.steps": 10}; None values are skipped (the default stays), and comma-separated text given for a
    tuple option is split into its items."""
    flat: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        if value is None:
            continue
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
            continue
        option = {f.name: f for f in dataclasses.fields(config)}[head].metadata.get(OPTION)
        if isinstance(value, str) and isinstance(getattr(option, "default", None), tuple):
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        flat[head] = value
    for head, sub in nested.items():
        flat[head] = configure(getattr(config, head), sub)
    return dataclasses.replace(config, **flat)


def add_option(parser: Any, table: Options, path: str, flag: str, **overrides: Any) -> argparse.Action:
    """An argparse flag for option `path` of `table`: its default, limits (via `type=`), choices and help.

    A bool option becomes a switch that flips its default (`--no-…` style flags pass `dest` and their own
    help). `overrides` replace any argument (e.g. `default=None` where `both` stages share a flag). The
    action remembers `table.name` and `path`, so tests can compare it with the dataclass.
    """
    option = table[path]
    kwargs: dict[str, Any] = {"default": option.shown_default, "help": option.help,
                              "dest": path.rsplit(".", 1)[-1]}
    if option.type is bool:
        kwargs["action"] = "store_false" if option.default else "store_true"
    elif option.choices:
        kwargs["choices"] = list(option.choices)
    elif option.cli_type() is not None:
        kwargs["type"] = option.cli_type()
    kwargs.update(overrides)
    action = parser.add_argument(flag, **kwargs)
    action.clif_option = (table.name, path)
    return action


# ------------------------------------------------------------------------------------------------- tables

PRECISIONS = ("auto", "no", "fp16", "bf16")
"""Mixed-precision modes of training (see training.loop)."""

LOOP = Options(
    "loop",
    steps=opt(500, "training (optimizer) steps", 1, 1_000_000),
    batch_size=opt(4, "images per training step (per process and micro-step)", 1, 4096),
    grad_accum=opt(1, "micro-steps per optimizer step", 1, 1024),
    mixed_precision=opt("auto", "auto: bf16 on a GPU (fp16 where bf16 is unsupported), full precision (no) on the "
                        "CPU", choices=PRECISIONS),
    gradient_checkpointing=opt(False, "less memory, slower steps"),
    adam_8bit=opt(True, "8-bit AdamW when bitsandbytes is installed and the device is CUDA"),
    max_grad_norm=opt(1.0, "gradient clipping (0: off)", 0, 1e6),
    warmup_steps=opt(0, "steps of linear learning-rate warm-up", 0, 1_000_000),
    seed=opt(0, "seed of the data order and noise", 0, MAX_SEED),
    checkpoint_every=opt(100, "steps between resumable checkpoints in the run folder", 1, 1_000_000),
    keep_checkpoints=opt(2, "how many of the latest checkpoints the run folder keeps", 1, 1000),
    preview_every=opt(0, "steps between leakage previews (saved in the run folder's previews/): each concept "
                      "alone and all together from one seed, drawn with the model as trained so far (0: none)",
                      0, 1_000_000),
    log_every=opt(10, "steps between log lines (0: none)", 0, 1_000_000),
)
"""The shared training loop (training.loop.LoopConfig); each stage derives its own defaults."""

LR = {"min": 0.0, "max": 1.0, "step": 1e-6}
RANK_ALPHA = {"min": 0.0, "max": 1024.0, "step": 0.5}
PREVIEW_STEPS = opt(20, "sampling steps of each leakage preview and of stage 2's thumbnail (0: none, the loss "
                    "curve instead)", 0, 1000)

STAGE1 = Options(
    "stage1",
    vectors=opt(2, "token vectors per concept (the public code uses 2)", 1, 16),
    lr=opt(1e-4, "learning rate of the token rows (and the projection head, when there is one)", **LR),
    text_lora_rank=opt(0, "text-encoder LoRA rank (0: token embeddings only)", 0, 256),
    text_lora_alpha=opt(0.0, "text-encoder LoRA alpha (0: the rank)", **RANK_ALPHA),
    text_lora_lr=opt(1e-4, "learning rate of the text-encoder LoRA", **LR),
    learnable_temperature=opt(False, "learn the contrastive loss's temperature instead of keeping it fixed"),
    holdout=opt(0.1, "fraction of the composition groups held out for the retrieval metric", 0, 0.99),
    preview_steps=PREVIEW_STEPS,
    loop=LOOP.derive("stage1.loop", steps=400, batch_size=32, checkpoint_every=100, log_every=25),
)
"""Stage 1, contrastive (train.contrastive.ContrastiveConfig)."""

STAGE2 = Options(
    "stage2",
    vectors=opt(2, "token vectors per concept when no stage-1 concepts are given (else theirs)", 1, 16),
    lora_rank=opt(16, "rank of the UNet LoRA", 1, 256),
    lora_alpha=opt(0.0, "UNet LoRA alpha (0: the rank)", **RANK_ALPHA),
    lora_targets=opt(("to_q", "to_k", "to_v", "to_out.0"), "UNet modules of the LoRA, comma-separated (the "
                     "attention projections by default)"),
    lr=opt(2e-4, "learning rate of the UNet LoRA (the public code's)", **LR),
    train_tokens=opt(True, "also train the concept token rows (off: the UNet LoRA only)"),
    token_lr=opt(5e-5, "learning rate of the concept token rows", **LR),
    masked_loss=opt(False, "weight the loss by the pictured items' masks (background_weight outside them)"),
    background_weight=opt(0.1, "loss weight outside the masks, with masked_loss", 0, 1, step=0.05),
    min_snr_gamma=opt(0.0, "min-SNR loss weighting (0: off, 5 is usual)", 0, 100, step=0.5),
    noise_offset=opt(0.0, "noise offset added to the training noise (0: off)", 0, 1, step=0.01),
    prior_weight=opt(0.0, "prior preservation with class images the base model draws (0: off)", 0, 10, step=0.05),
    prior_images=opt(8, "class images per class word for prior preservation", 1, 1000),
    preview_prompt=opt("", "the previews' 'together' prompt (empty: a caption of the dataset with every concept)"),
    preview_steps=PREVIEW_STEPS,
    loop=LOOP.derive("stage2.loop", steps=1000, batch_size=1, checkpoint_every=250, log_every=50,
                     preview_every=100),
)
"""Stage 2, decoder (train.decoder.DecoderConfig)."""

ERASE_METHODS = ("all-but-one", "esd", "esd-x", "esd-u")
"""esd-x / esd-u are ESD on its paper's two weight subsets (cross-attention / everything else)."""
ERASE_SUBSETS = ("auto", "lora", "kv", "xattn", "non-xattn", "full")

ERASE = Options(
    "erase",
    method=opt("all-but-one", "all-but-one moves only the erased prompt's guidance and holds the unconditional "
               "prediction; esd: ESD's objective on params; esd-x / esd-u: the ESD baseline on cross-attention / "
               "on every other weight", choices=ERASE_METHODS),
    params=opt("auto", "trained weights: auto = the method's own (all-but-one: lora, esd-x: cross-attention, "
               "esd-u: the rest)", choices=ERASE_SUBSETS),
    eta=opt(1.0, "η: scale of the alternative's guidance (All-but-One) / ESD's negative guidance", 0, 10, step=0.05),
    lam=opt(1.0, "λ: how strongly All-but-One holds the unconditional prediction", 0, 100, step=0.05),
    negative_eta=opt(0.0, "without an alternative, the target's guidance becomes -negative_eta times its own", 0, 10),
    preserve_weight=opt(1.0, "weight of the preserve prompts' hold", 0, 100),
    lr=opt(0.0, "learning rate (0: 1e-4 for lora, 1e-5 for weight subsets)", **LR),
    lora_rank=opt(8, "rank of the LoRA (params lora)", 1, 256),
    trajectories=opt(4, "DDIM trajectories of the frozen model per erased prompt", 1, 64),
    sample_steps=opt(50, "DDIM steps per trajectory; every step's noisy latent goes into the training pool", 2, 1000),
    guidance_scale=opt(3.0, "classifier-free guidance of the trajectories (ESD's start guidance)", 0, MAX_GUIDANCE),
    resolution=opt(0, "pixels of the trajectories (0: the model's native size)", 0, 4096, step=8),
    patch_tolerance=opt(0.01, "weight subsets: largest relative error of the patch's low-rank factorisation",
                        0, 0.999),
    patch_max_rank=opt(0, "weight subsets: cap on the patch's rank per module (0: none)", 0, 4096),
    loop=LOOP.derive("erase.loop", steps={"default": 400, "max": 100_000}, batch_size={"default": 2, "max": 64},
                     preview_every={"default": 50, "max": 100_000,
                                    "help": "steps between samples of the erased prompts (0: none)"},
                     checkpoint_every=100, log_every=25),
)
"""Erasure (erase.config.EraseConfig)."""

AUGMENT_LAYOUTS = ("left_right", "top_bottom", "both")
COUNT = {"min": 0, "max": 100_000}

AUGMENT = Options(
    "augment",
    resolution=opt(512, "square canvas side: 512 for SD1.x, 768 for SD2.x, 1024 for SDXL", 32, 2048, step=8),
    n_global=opt(40, "Global samples: a concept beside a common concept", **COUNT),
    n_region=opt(40, "Region samples: a concept's part beside a common concept or part", **COUNT),
    n_mix=opt(20, "Mix samples: two concepts (needs two or more)", **COUNT),
    n_single=opt(10, "single samples: one concept alone", **COUNT),
    layout=opt("left_right", "where the two slots sit on the canvas: side by side, stacked, or both",
               choices=AUGMENT_LAYOUTS),
    both_orders=opt(True, "render every pair in both slot orders"),
    n_parts=opt(4, "parts per concept picture when the concept has no part names", 1, 12),
    seed=opt(0, "seed of the compositions (which pictures, parts and placements)", 0, MAX_SEED),
)
"""The augmented set (augment.compose.AugmentConfig)."""
