"""What an erasure run erases and how: targets with optional alternatives, method, trained weights, budget.

Every default is listed (with its reason) in docs/erasure.md; change one there when you change it here.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from clif_core.errors import ClifError
from clif_core.options import ERASE, ERASE_METHODS, ERASE_SUBSETS
from clif_core.training.loop import LoopConfig
from clif_core.validation import check_finite_fields

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

OBJECTIVES = ("all-but-one", "esd")
METHODS = ERASE_METHODS
"""esd-x / esd-u are ESD on its paper's two weight subsets (cross-attention / everything else)."""
SUBSETS = ERASE_SUBSETS
_METHOD_SUBSET = {"all-but-one": "lora", "esd": "xattn", "esd-x": "xattn", "esd-u": "non-xattn"}
ARROW = "->"


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class EraseTarget:
    """One concept to erase (`target`, a prompt as the model reads it) and where to steer it instead."""

    target: str
    alternative: Optional[str] = None

    def describe(self) -> str:
        return f"{self.target} {ARROW} {self.alternative}" if self.alternative else self.target


def parse_targets(lines: str | Sequence[str]) -> list[EraseTarget]:
    """Targets from text: one per line (or list item), `target` or `target -> alternative`; blank lines and
    lines starting with # are skipped."""
    items = lines.splitlines() if isinstance(lines, str) else list(lines)
    targets = []
    for number, line in enumerate(items, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        target, arrow, alternative = line.partition(ARROW)
        if arrow and ARROW in alternative:
            raise ClifError(f"targets line {number} ({line!r}) has two '{ARROW}'; write 'target {ARROW} alternative'")
        targets.append(EraseTarget(target.strip(), alternative.strip() or None))
    return targets


@dataclass
class EraseConfig:
    """An erasure run. `method`: all-but-one (default), esd (ESD's objective on `params`), esd-x / esd-u
    (ESD on cross-attention / on every other weight). `params`: which UNet weights train — auto (the
    method's own: lora for all-but-one), lora (peft LoRA of `lora_rank` on every attention projection), kv
    (cross-attention to_k/to_v), xattn (all cross-attention projections), non-xattn (every LoRA-carriable
    weight outside cross-attention), full (every LoRA-carriable weight). Defaults, limits and help:
    `options.ERASE`."""

    targets: list[EraseTarget]
    preserve: list[str] = field(default_factory=list)
    method: str = ERASE.field("method")
    params: str = ERASE.field("params")
    eta: float = ERASE.field("eta")  # η: scale of the alternative's guidance (All-but-One) / ESD's negative guidance
    lam: float = ERASE.field("lam")  # λ: weight of the unconditional hold ‖ε_θ(x_t,∅) − ε*(x_t,∅)‖² (All-but-One)
    negative_eta: float = ERASE.field("negative_eta")  # no alternative: target guidance −negative_eta·(ε*(c_e) − ε*(∅))
    preserve_weight: float = ERASE.field("preserve_weight")  # weight of ‖ε_θ(x_t,c_p) − ε*(x_t,c_p)‖²
    lr: float = ERASE.field("lr")  # 0: 1e-4 for lora, 1e-5 for the weight subsets
    lora_rank: int = ERASE.field("lora_rank")
    trajectories: int = ERASE.field("trajectories")  # DDIM trajectories of the frozen model per erased prompt
    sample_steps: int = ERASE.field("sample_steps")  # DDIM steps per trajectory; each step's x_t goes into the pool
    guidance_scale: float = ERASE.field("guidance_scale")  # CFG scale of the trajectories (ESD's start_guidance)
    resolution: int = ERASE.field("resolution")  # pixels; 0: the native size (UNet sample_size × VAE factor)
    patch_tolerance: float = ERASE.field("patch_tolerance")  # weight subsets: largest relative Frobenius error of the SVD
    patch_max_rank: int = ERASE.field("patch_max_rank")  # weight subsets: cap on the patch's per-module rank (0: none)
    loop: LoopConfig = ERASE.field("loop", LoopConfig)

    @property
    def objective(self) -> str:
        return "esd" if self.method.startswith("esd") else self.method

    @property
    def subset(self) -> str:
        return _METHOD_SUBSET[self.method] if self.params == "auto" else self.params

    @property
    def progress_total(self) -> int:
        """Progress steps of a run: every DDIM step of every trajectory of every target, then the training."""
        return len(self.targets) * self.trajectories * self.sample_steps + self.loop.steps

    @property
    def learning_rate(self) -> float:
        if self.lr > 0:
            return self.lr
        return 1e-4 if self.subset == "lora" else 1e-5

    def check(self) -> None:
        """The settings on their own (no model needed); ClifError names the setting and the fix."""
        if self.method not in METHODS:
            raise ClifError(f"erase method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.params not in SUBSETS:
            raise ClifError(f"erase params {self.params!r} is not one of {', '.join(SUBSETS)}")
        if self.method in ("esd-x", "esd-u") and self.params not in ("auto", _METHOD_SUBSET[self.method]):
            raise ClifError(
                f"method {self.method} trains {_METHOD_SUBSET[self.method]} by definition but params is "
                f"{self.params!r}; use method 'esd' to run ESD's objective on {self.params!r}, or params 'auto'"
            )
        check_finite_fields(self, "erase setting")
        for name in ("eta", "lam", "negative_eta", "preserve_weight", "lr"):
            if getattr(self, name) < 0:
                raise ClifError(f"erase setting {name} is {getattr(self, name)}; it cannot be negative")
        for name, low in (("lora_rank", 1), ("trajectories", 1), ("sample_steps", 2)):
            if getattr(self, name) < low:
                raise ClifError(f"erase setting {name} is {getattr(self, name)}; it must be at least {low}")
        if self.sample_steps > 1000:
            raise ClifError(f"sample_steps {self.sample_steps} is more than the 1000 diffusion steps; use 50")
        if not 0 <= self.patch_tolerance < 1:
            raise ClifError(f"patch_tolerance {self.patch_tolerance} must be at least 0 and below 1 (0.01 = 1%)")
        if self.patch_max_rank < 0 or self.resolution < 0:
            raise ClifError("patch_max_rank and resolution cannot be negative (0 means automatic)")
        self.loop.check()
        check_targets(self.targets, self.preserve)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = [asdict(t) for t in self.targets]
        d["loop"] = self.loop.to_dict()
        return d


def _contains(prompt: str, phrase: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(_norm(phrase)) + r"(?!\w)", _norm(prompt)) is not None


def check_targets(targets: Sequence[EraseTarget], preserve: Sequence[str]) -> None:
    """Refuse targets that cannot make a sensible run (names the entry and the fix)."""
    if not targets:
        raise ClifError("nothing to erase: give at least one target (one per line, 'target -> alternative')")
    seen: dict[str, int] = {}
    for i, t in enumerate(targets, 1):
        if not t.target.strip():
            raise ClifError(f"target {i} is empty; write the concept to erase, e.g. 'van gogh'")
        if t.alternative is not None and not t.alternative.strip():
            raise ClifError(f"target {i} ({t.target!r}) has an empty alternative; leave out '{ARROW}' for none")
        if t.alternative is not None and _norm(t.alternative) == _norm(t.target):
            raise ClifError(
                f"target {i} ({t.target!r}) names itself as its alternative, which would erase nothing; "
                "give another concept (e.g. 'pig -> cow') or none"
            )
        key = _norm(t.target)
        if key in seen:
            raise ClifError(f"target {i} ({t.target!r}) repeats target {seen[key]}; list each concept once")
        seen[key] = i
    for j, prompt in enumerate(preserve, 1):
        if not prompt.strip():
            raise ClifError(f"preserve prompt {j} is empty; remove the blank entry")
        for t in targets:
            if _contains(prompt, t.target):
                raise ClifError(
                    f"preserve prompt {j} ({prompt!r}) contains the target {t.target!r}: it would ask to keep what "
                    "is being erased. Remove it from the preserve list or reword it"
                )


def unknown_target_warnings(base: BaseModel, targets: Sequence[EraseTarget]) -> list[str]:
    """Warnings for targets made only of words the model's tokenizers do not know.

    CLIP's byte-level BPE spells any word, so "unknown" means: a placeholder such as "<alice>" that is not a
    token of the vocabulary (a concept of a concept file that the base does not carry), or a word that
    tokenises to the unknown token only. Such a target erases nothing the model knows.
    """
    from clif_core.concepts.apply import PLACEHOLDER

    warnings = []
    for t in targets:
        unknown_everywhere = True
        for slot in base.text:
            tok = slot.tokenizer
            vocab = tok.get_vocab()
            known = False
            for word in t.target.split():
                if PLACEHOLDER.fullmatch(word):
                    known = known or word in vocab
                    continue
                ids = tok(word, add_special_tokens=False).input_ids
                known = known or any(i != tok.unk_token_id for i in ids)
            unknown_everywhere = unknown_everywhere and not known
        if unknown_everywhere:
            warnings.append(
                f"target {t.target!r} is made only of tokens the base model does not know; erasing it changes "
                "nothing the model knows. Write the concept in plain words (concept-file placeholders are not "
                "part of the base model)"
            )
    return warnings
