"""What a finished training run returns (CLIF's stages and erasure alike), and how it writes it: the concept file
or erasure patch it made, and RUN/metrics.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.files import save_concept_file
from clif_core.fileio import write_text_atomic

from .loop import TrainResult
from .run_folder import RunFolder

METRICS_FILE = "metrics.json"
SHOWN_DIGITS = 4
"""Significant digits of the numbers in a report (metrics.json keeps them whole)."""


@dataclass
class RunResult:
    """A finished run: the file it made (a concept file or an erasure patch, also written to `path` by the main
    process), its run folder, its metrics and notes."""

    file: ConceptFile
    path: Path
    run_dir: Path
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    train: Optional[TrainResult] = None

    def report(self) -> str:
        """Readable lines for the node output and the CLI: what the file holds, where it is, notes, metrics."""
        lines = [self.file.summary(), f"written to {self.path}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"{k}: {json.dumps(_rounded(v), sort_keys=True)}" for k, v in self.metrics.items()]
        return "\n".join(lines)

    def write(self, run: RunFolder, accelerator: Any) -> None:
        """The file and RUN/metrics.json, atomically, by the main process; every process waits for them."""
        if accelerator.is_main_process:
            save_concept_file(self.file, self.path)
            write_text_atomic(run.output(METRICS_FILE), json.dumps(
                {"metrics": self.metrics, "notes": self.notes, "file": str(self.path)}, indent=1, sort_keys=True,
                allow_nan=True))
        accelerator.wait_for_everyone()


def _rounded(value: Any) -> Any:
    """`value` with every finite float rounded to SHOWN_DIGITS significant digits (dicts and lists too)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SHOWN_DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value
