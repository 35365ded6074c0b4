"""A pretraining's learning curve: prompt following measured at UNet checkpoints, as JSON and a PNG.

Each point comes from `clif sandbox oracle-eval --model SNAPSHOT --curve FILE`, where SNAPSHOT is written by
`clif sandbox pretrain --work W --snapshot SNAPSHOT` (the EMA weights at that step) or is a finished model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from clif_core.errors import ClifError
from clif_core.fileio import write_text_atomic
from clif_core.training.curve import save_loss_png

SERIES = ("one_object", "two_objects", "figures")


def _step_of(model: Path) -> tuple[int, int]:
    """(UNet step, batch size) of a sandbox model folder, from its `sandbox_model.json`."""
    record_file = Path(model) / "sandbox_model.json"
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        unet = record["config"]["unet"]
        step = record["unfinished"]["step"] if "unfinished" in record else unet["steps"]
        return int(step), int(unet["batch_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClifError(f"{record_file}: not a sandbox model record with its UNet step ({err})") from None


def add_point(curve_file: Union[str, Path], model: Union[str, Path], report: dict[str, Any]) -> list[dict]:
    """Add (or replace, for the same step) the point of `report` to the curve; redraw `<curve>.png`."""
    path = Path(curve_file)
    points: list[dict] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    step, batch = _step_of(Path(model))
    sets = report["prompt_following"]["sets"]
    point = {"step": step, "images_seen": step * batch, **{k: sets[k]["fully_correct"] for k in SERIES if k in sets}}
    if "characters" in report:
        point["characters_min"] = report["characters"]["min_recognised"]
        point["characters_mean"] = report["characters"]["mean_recognised"]
    points = sorted([p for p in points if p["step"] != step] + [point], key=lambda p: p["step"])
    write_text_atomic(path, json.dumps(points, indent=1) + "\n")
    curves = [(f"{name}: fully correct", [(p["step"], p[name], 0.0) for p in points if name in p]) for name in SERIES]
    if any("characters_mean" in p for p in points):
        curves.append(("characters: mean recognised", [(p["step"], p["characters_mean"], 0.0) for p in points if "characters_mean" in p]))
    save_loss_png(curves, path.with_suffix(".png"))
    return points
