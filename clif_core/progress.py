"""The seam through which long-running core work reports progress and learns it should stop.

The core never imports ComfyUI: nodes pass callables bound to ComfyUI's ProgressBar and interrupt
check, the CLI passes tqdm and a signal flag, tests pass plain lambdas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import Cancelled

ProgressFn = Callable[[int, int, Optional[Any]], None]


def _no_progress(step: int, total: int, preview: Optional[Any] = None) -> None:
    return None


def _never_stop() -> bool:
    return False


@dataclass
class Reporter:
    """`progress(step, total, preview)`; `should_stop()` is polled once per step.

    `preview` is a PIL image or None. `log` receives human-readable lines (warnings, metrics).
    """

    progress: ProgressFn = _no_progress
    should_stop: Callable[[], bool] = _never_stop
    log: Callable[[str], None] = field(default=print)

    def check_cancel(self) -> None:
        """Raise `Cancelled` if the user asked to stop."""
        if self.should_stop():
            raise Cancelled("Stopped on request; nothing partial was written.")


SILENT = Reporter(log=lambda message: None)
