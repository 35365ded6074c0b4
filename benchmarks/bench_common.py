"""What the benchmark scripts share: the `--json` result file, CPU threads, the sandbox model, peak RSS and
running one side of a comparison in a process of its own (so the two sides do not share a memory peak).

A result file is one JSON object: {"benchmark", "device", "settings", "rows": [{"name", <figures>...}],
"ratios": {name: value}}; `benchmarks/suite_report.py` turns several of them into one JSON and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_THREADS = 2


def sandbox_folder() -> Path:
    """The built-in sandbox model's diffusers folder; exits with a message when this checkout lacks it."""
    from clif_core.models.bundled import SANDBOX_MODEL, sandbox_available

    if not sandbox_available():
        raise SystemExit("the sandbox model's weights are not in this checkout (clif_core/sandbox/weights/base)")
    return SANDBOX_MODEL


def set_cpu_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def ratio(a: float, b: float) -> float:
    """a / b, NaN where either is missing or b is 0 (e.g. GPU memory on the CPU)."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def result(benchmark: str, device: str, settings: dict[str, Any], rows: Sequence[dict[str, Any]],
           ratios: dict[str, float]) -> dict[str, Any]:
    return {"benchmark": benchmark, "device": device, "settings": settings, "rows": list(rows), "ratios": ratios}


def write_json(path: Optional[str | Path], payload: dict[str, Any]) -> None:
    """Write `payload` to `path` (nothing when None); NaN is written as null."""
    if path is None:
        return

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    Path(path).write_text(json.dumps(clean(payload), indent=1), encoding="utf-8")


def print_ratios(ratios: dict[str, float]) -> None:
    for name, value in ratios.items():
        print(f"{name}: x{value:.2f}")


def add_side_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden options of a script that runs its sides with `run_side`: which side, on which dataset and batch
    size, and the file it writes its figures to."""
    parser.add_argument("--side", choices=["plain", "pack"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", help=argparse.SUPPRESS)


def run_side(script: Path, args: Sequence[str]) -> dict[str, Any]:
    """Run `script` with `args` plus `--side-out FILE` in a fresh interpreter; return what it wrote there."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "side.json"
        done = subprocess.run([sys.executable, str(script), *args, "--side-out", str(out)], capture_output=True,
                              text=True, cwd=REPO)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{script.name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(out.read_text(encoding="utf-8"))
