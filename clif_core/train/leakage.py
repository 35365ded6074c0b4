"""Leakage previews while training: each concept alone, then all of them together, from one fixed seed.

Concept leakage (one concept's look showing up where only another was asked for, or two concepts blending
into one when asked for together) is what CLIF trains against, so the previews show it directly: a column per
concept prompted alone and one with every concept together, all from the same seed, so that the prompt is
the only difference between the columns. Every preview uses the same seed, so previews of successive steps
show how the leakage evolves.

On the built-in sandbox model, with concepts named after its shipped characters, the sandbox oracle reads
every column (`clif_core/sandbox/preview_scores.py`): the grid says what it recognised under the pictures and
RUN/previews/oracle.csv keeps one row per column and preview step, the curve of the run's leakage.

They are drawn by the pack's sampler (`clif_core.sample.sampler.sample`) on the model being trained, with its
UNet LoRA and concept tokens as they are at that step: no second copy of the model. The trained modules are
put in eval mode and sampled without gradients and without the training's autocast (the sampler works in
the model's dtype, as it does in ComfyUI), then put back in the mode they were in. The sampler draws its
noise from its own seeded generators and the training loop reseeds the global generator before every
micro-step, so previews never change what is trained.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch

from clif_core.fileio import write_text_atomic
from clif_core.sample.config import SampleConfig
from clif_core.sample.sampler import sample
from clif_core.sheets import labelled_grid, with_footer

from .prior import CLASS_PROMPT

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


@dataclass(frozen=True)
class PreviewPrompt:
    """One column of the grid: its title and the prompt sampled for it (placeholders as written)."""

    title: str
    prompt: str


def _whole_concepts(record: Any) -> list[str]:
    """The placeholders of a dataset sample's whole-concept slots (parts and common words left out)."""
    return [s.token for s in record.slots if s.source == "concept" and s.part is None]


def leakage_prompts(records: Sequence[Any], tokens: Sequence[str], together: str = "") -> list[PreviewPrompt]:
    """A prompt per concept alone, then one with all of them (for two concepts or more, or when `together` is
    given). Each is the dataset's own caption where it has one (a "single" sample of that concept; a sample
    showing exactly these concepts whole), else "a photo of <alice>" / "a photo of <alice> and <bob>"."""
    prompts = []
    for token in tokens:
        alone = next((r.caption for r in records if r.kind == "single" and _whole_concepts(r) == [token]),
                     CLASS_PROMPT.format(word=token))
        prompts.append(PreviewPrompt(f"{token} alone", alone))
    if len(tokens) > 1 or together:
        caption = together or next(
            (r.caption for r in records if sorted(_whole_concepts(r)) == sorted(tokens)),
            CLASS_PROMPT.format(word=" and ".join(tokens)))
        prompts.append(PreviewPrompt(" + ".join(tokens) if len(tokens) > 1 else "preview prompt", caption))
    return prompts


@dataclass
class LeakagePreview:
    """Renders `prompts` with `base` as it is now; `modules` are the ones training switches to train mode.

    `applied_tokens` maps each placeholder to its vector tokens (the training run's `ConceptTokens`, already
    on `base`)."""

    base: BaseModel
    prompts: Sequence[PreviewPrompt]
    applied_tokens: Mapping[str, Sequence[str]]
    modules: Sequence[torch.nn.Module]
    steps: int
    seed: int
    scorer: Optional[Callable[[Sequence[tuple[str, str]], list], list]] = None  # see sandbox/preview_scores.py
    scores_file: Optional[Path] = None  # where the scorer's readings go, one CSV row per column and step

    def render(self, prompts: Optional[Sequence[PreviewPrompt]] = None) -> list:
        """One PIL image per prompt (default: all of them), every one from `seed`."""
        template = SampleConfig(prompt="", steps=self.steps, seed=self.seed)
        modes = [m.training for m in self.modules]
        try:
            for m in self.modules:
                m.eval()
            with torch.no_grad(), torch.autocast(self.base.device.type, enabled=False):
                return [sample(self.base, dataclasses.replace(template, prompt=p.prompt),
                               applied_tokens=self.applied_tokens).images[0]
                        for p in (self.prompts if prompts is None else prompts)]
        finally:
            for m, mode in zip(self.modules, modes):
                m.train(mode)

    def grid(self, step: int) -> Any:
        """Every prompt side by side, titled, in one labelled row ("seed N"); with a scorer, what it read in each
        column under the row (and in `scores_file`)."""
        images = self.render()
        cell = max(64, images[0].width)
        sheet = labelled_grid([(f"seed {self.seed}", images)], [p.title for p in self.prompts], cell=cell,
                              label_width=cell * 3 // 4)
        if self.scorer is None:
            return sheet
        scores = self.scorer([(p.title, p.prompt) for p in self.prompts], images)
        if self.scores_file is not None:
            _record_scores(self.scores_file, step, scores)
        return with_footer(sheet, ["oracle: " + s.describe() for s in scores])


def preview_scorer(base: BaseModel, placeholders: Sequence[str], draws_previews: bool) -> Optional[Callable]:
    """The sandbox oracle's scorer for a run's previews when it applies to this base and these concepts and the
    run draws previews at all (`sandbox/preview_scores.py`), else None (nothing is loaded)."""
    if not draws_previews:
        return None
    from clif_core.sandbox.preview_scores import oracle_scorer

    return oracle_scorer(base, placeholders)


def read_scores(path: Path) -> list[dict[str, str]]:
    """The rows of a run's previews/oracle.csv (SCORE_COLUMNS), rows with a malformed step left out."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r.get("step", "").isdigit()]


SCORES_FILE = "oracle.csv"
SCORE_COLUMNS = ("step", "column", "expected", "recognised", "correct")


def _record_scores(path: Path, step: int, scores: Sequence[Any]) -> None:
    """Rewrite the CSV with this step's rows in place of any earlier rows of the same step (a resumed run
    previews some steps again), rows in step order."""
    rows = [r for r in read_scores(path) if int(r["step"]) != step]
    rows += [{"step": str(step), "column": s.column, "expected": " ".join(s.expected),
              "recognised": " ".join(s.recognised), "correct": str(int(s.correct))} for s in scores]
    rows.sort(key=lambda r: int(r["step"]))
    out = io.StringIO()
    writer = csv.DictWriter(out, SCORE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())
