"""What CLIF's two training stages share around the loop: the result they return, setup checks, writing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from clif_core.concepts.file_format import ConceptFile, save_concept_file
from clif_core.errors import ClifError
from clif_core.fileio import write_text_atomic

from clif_core.training.loop import TrainResult
from clif_core.training.run_folder import RunFolder

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


def base_recipe(base: Any) -> dict[str, Any]:
    return {"family": base.family, "fingerprint": base.fingerprint, "prediction_type": base.prediction_type,
            "dtype": str(base.dtype).removeprefix("torch.")}


def check_precision(base: Any, precision: str) -> None:
    """Frozen weights in half precision need autocast: full precision on them would mix dtypes."""
    if precision == "no" and base.dtype != torch.float32:
        raise ClifError(
            f"the base model is loaded in {str(base.dtype).removeprefix('torch.')}; training without mixed "
            "precision needs it in float32. Choose mixed precision bf16/fp16, or load the base model in float32"
        )


def open_run(run: RunFolder, recipe: dict[str, Any], restart: bool, accelerator: Any) -> None:
    """Open the run folder on the main process (the others wait), so only one process writes it."""
    if accelerator.is_main_process:
        run.open(recipe, restart=restart)
    accelerator.wait_for_everyone()


def write_outputs(result: StageResult, run: RunFolder, accelerator: Any) -> None:
    """The concept file and metrics.json, atomically, by the main process."""
    if accelerator.is_main_process:
        save_concept_file(result.concepts, result.path)
        write_text_atomic(run.output(METRICS_FILE), json.dumps(
            {"metrics": result.metrics, "notes": result.notes}, indent=1, sort_keys=True, allow_nan=True))
    accelerator.wait_for_everyone()
