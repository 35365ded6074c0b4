"""Both CLIF stages in one call: stage 1 into RUN/stage1/, stage 2 from its file into RUN/stage2/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from clif_core.errors import ClifError
from clif_core.progress import SILENT, Reporter
from clif_core.training.loop import sub_reporter
from clif_core.training.precision import make_accelerator
from clif_core.training.result import RunResult

from .contrastive import ContrastiveConfig, train_contrastive
from .decoder import DecoderConfig, train_decoder
from .vision import VisionTower

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

STAGE_DIRS = ("stage1", "stage2")


def train_concepts(
    base: BaseModel,
    dataset: str | Path,
    vision: str | Path | VisionTower,
    run_dir: str | Path,
    stage1: Optional[ContrastiveConfig] = None,
    stage2: Optional[DecoderConfig] = None,
    reporter: Reporter = SILENT,
    accelerator: Any = None,
    restart: bool = False,
    class_dir: Optional[str | Path] = None,
    generate: Optional[Callable[[str, int, int], list]] = None,
) -> RunResult:
    """Stage 1 then stage 2 (progress runs over both); returns stage 2's result, with stage 1's notes.

    Both stages run with one precision (an accelerate process trains in one); resuming picks up whichever
    stage was interrupted.
    """
    stage1 = stage1 or ContrastiveConfig()
    stage2 = stage2 or DecoderConfig()
    if stage1.loop.mixed_precision != stage2.loop.mixed_precision:
        raise ClifError(
            f"stage 1 asks for mixed precision {stage1.loop.mixed_precision!r} and stage 2 for "
            f"{stage2.loop.mixed_precision!r}; both stages of one run use the same"
        )
    accelerator = accelerator or make_accelerator(stage1.loop, base.device)
    total = stage1.loop.steps + stage2.loop.steps
    root = Path(run_dir)
    first = train_contrastive(base, dataset, vision, root / STAGE_DIRS[0], stage1, sub_reporter(reporter, 0, total),
                              accelerator, restart)
    result = train_decoder(base, dataset, root / STAGE_DIRS[1], stage2, init=first.file,
                           reporter=sub_reporter(reporter, stage1.loop.steps, total), accelerator=accelerator,
                           restart=restart, class_dir=class_dir, generate=generate)
    result.metrics = {"stage1": first.metrics, "stage2": result.metrics}
    return result
