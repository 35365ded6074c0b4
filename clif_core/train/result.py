"""What CLIF's two training stages return, and how each writes it (the concept file and metrics.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from clif_core.concepts.file_format import ConceptFile, save_concept_file
from clif_core.fileio import write_text_atomic
from clif_core.training.loop import TrainResult
from clif_core.training.run_folder import RunFolder

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

METRICS_FILE = "metrics.json"


@dataclass
class StageResult:
    """A finished stage: the concept file (also written to `path` by the main process), its metrics and notes."""

    concepts: ConceptFile
    path: Path
    run_dir: Path
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    train: Optional[TrainResult] = None

    def report(self) -> str:
        """Readable lines for the node output and the CLI."""
        lines = [f"{self.concepts.display_title()}: {self.path}"]
        lines += [f"note: {n}" for n in self.notes]
        for key, value in self.metrics.items():
            lines.append(f"{key}: {json.dumps(value, sort_keys=True)}")
        return "\n".join(lines)


def base_recipe(base: BaseModel) -> dict[str, Any]:
    return {"family": base.family, "fingerprint": base.fingerprint, "prediction_type": base.prediction_type,
            "dtype": str(base.dtype).removeprefix("torch.")}


def write_outputs(result: StageResult, run: RunFolder, accelerator: Any) -> None:
    """The concept file and metrics.json, atomically, by the main process."""
    if accelerator.is_main_process:
        save_concept_file(result.concepts, result.path)
        write_text_atomic(run.output(METRICS_FILE), json.dumps(
            {"metrics": result.metrics, "notes": result.notes}, indent=1, sort_keys=True, allow_nan=True))
    accelerator.wait_for_everyone()
