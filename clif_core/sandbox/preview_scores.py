"""Leakage previews read by the sandbox oracle, so that the leakage of a run on the sandbox model has a curve.

When a training run's base model is the built-in sandbox model and every concept's placeholder names a
shipped sandbox character (`<ada>` is the character ada, as the bundled examples and the main job name
them), each preview column is read by the oracle: which of the run's characters it recognises in the
picture, against the ones the column's prompt asks for. A column is right when it recognises exactly those:
a concept alone that shows up as the other one (or as both) is leakage, a "together" column missing one is
a missing concept. One picture per column and preview (the preview's fixed seed), so a single preview says
little; the sequence over the run's steps is the curve (`previews/oracle.csv`).

A user's own concept that happens to be called like a shipped character is read as that character: on the
sandbox model only, and the scores are shown, never used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel
    from clif_core.sandbox.characters import CharacterSet
    from clif_core.sandbox.oracle import Oracle


@dataclass(frozen=True)
class ColumnScore:
    """What the oracle read in one preview column: the run's characters it `recognised` and the ones the
    column's prompt asked for (`expected`)."""

    column: str
    expected: tuple[str, ...]
    recognised: tuple[str, ...]

    @property
    def correct(self) -> bool:
        return set(self.expected) == set(self.recognised)

    def describe(self) -> str:
        seen = ", ".join(self.recognised) or "none"
        return f"{self.column}: reads {seen} ({'right' if self.correct else 'wrong'})"


class OracleScorer:
    """Reads preview columns with `oracle`; `names` maps each placeholder of the run to its character."""

    def __init__(self, oracle: Oracle, characters: CharacterSet, names: dict[str, str]):
        self.oracle, self.characters, self.names = oracle, characters, dict(names)

    def __call__(self, columns: Sequence[tuple[str, str]], images: Sequence[Any]) -> list[ColumnScore]:
        """`columns`: (title, prompt) per image, in order."""
        from clif_core.concepts.apply import PLACEHOLDER

        ours = set(self.names.values())
        scores = []
        for (title, prompt), reading in zip(columns, self.oracle.read(list(images))):
            expected = tuple(dict.fromkeys(self.names[t] for t in PLACEHOLDER.findall(prompt) if t in self.names))
            seen = (self.characters.match(thing) for thing in reading.slots.values() if thing is not None)
            recognised = tuple(sorted({name for name in seen if name in ours}))
            scores.append(ColumnScore(title, expected, recognised))
        return scores


def oracle_scorer(base: BaseModel, tokens: Sequence[str]) -> Optional[OracleScorer]:
    """A scorer when `base` is the built-in sandbox model (same fingerprint as its record), the oracle's weights
    are in this checkout and every placeholder in `tokens` names a shipped character; None otherwise."""
    from clif_core.models.bundled import SANDBOX_RECORD
    from clif_core.sandbox.characters import load_characters
    from clif_core.sandbox.oracle import DEFAULT_WEIGHTS, Oracle

    if not tokens or not DEFAULT_WEIGHTS.is_file() or not SANDBOX_RECORD.is_file():
        return None
    try:
        fingerprint = json.loads(SANDBOX_RECORD.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError):
        return None
    characters = load_characters()
    names = {token: token.strip("<>") for token in tokens}
    if fingerprint != base.fingerprint or any(name not in characters.characters for name in names.values()):
        return None
    return OracleScorer(Oracle.load(device=base.device), characters, names)
