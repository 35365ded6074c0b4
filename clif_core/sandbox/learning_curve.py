"""A pretraining's learning curve: prompt following measured at UNet checkpoints, as JSON and a PNG.

Each point comes from `clif sandbox oracle-eval --model SNAPSHOT --curve FILE`, where SNAPSHOT is written by
`clif sandbox pretrain --work W --snapshot SNAPSHOT` (the EMA weights at that step) or is a finished model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from PIL import Image, ImageDraw

from clif_core.errors import ClifError
from clif_core.fileio import atomic_path, write_text_atomic
from clif_core.sheets import load_font
from clif_core.training.curve import ticks

# (key in a point, legend, colour, the issue's target for it); the prompt sets' keys are oracle-eval's set names
PROMPT_SET_LINES = (
    ("one_object", "one object", (31, 119, 180), 0.90),
    ("two_objects", "two objects", (255, 127, 14), 0.75),
    ("figures", "figures", (44, 160, 44), 0.60),
)
LINES = PROMPT_SET_LINES + (("characters_mean", "characters (mean recognised)", (148, 103, 189), 0.50),)


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
    point = {"step": step, "images_seen": step * batch}
    point.update({k: sets[k]["fully_correct"] for k, *_ in PROMPT_SET_LINES if k in sets})
    if "characters" in report:
        point["characters_min"] = report["characters"]["min_recognised"]
        point["characters_mean"] = report["characters"]["mean_recognised"]
    points = sorted([p for p in points if p["step"] != step] + [point], key=lambda p: p["step"])
    write_text_atomic(path, json.dumps(points, indent=1) + "\n")
    with atomic_path(path.with_suffix(".png")) as tmp:
        draw_curve(points).save(tmp, format="PNG")
    return points


def draw_curve(points: list[dict], width: int = 760, height: int = 420) -> Image.Image:
    """One panel, 0–1 on the y axis: each prompt set's fully-correct share (and the characters' mean) against
    the UNet step, with its target as a dashed line of the same colour."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = load_font(13)
    box = (52, 30, width - 16, height - 96)
    s_hi = max([p["step"] for p in points] + [1])
    draw.text((box[0], 8), "prompt following (fully correct) by UNet step; dashed: targets", fill="black", font=font)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (box[0] + step / s_hi * (box[2] - box[0]), box[3] - value * (box[3] - box[1]))

    for tick in ticks(0.0, 1.0):
        _, y = xy(0, tick)
        draw.line((box[0], y, box[2], y), fill=(232, 232, 232))
        draw.text((8, y - 7), f"{tick:.2g}", fill="black", font=font)
    for tick in ticks(0.0, s_hi):
        x, _ = xy(tick, 0)
        draw.line((x, box[3], x, box[3] + 4), fill="black")
        draw.text((x - 12, box[3] + 6), f"{tick:g}", fill="black", font=font)
    draw.text((box[2] - 30, box[3] + 20), "step", fill="black", font=font)
    draw.rectangle(box, outline=(160, 160, 160))
    for k, (key, label, colour, target) in enumerate(LINES):
        _, ty = xy(0, target)
        for x in range(box[0], box[2], 12):
            draw.line((x, ty, min(x + 6, box[2]), ty), fill=colour, width=1)
        series = [xy(p["step"], p[key]) for p in points if key in p]
        if len(series) > 1:
            draw.line(series, fill=colour, width=2)
        for x, y in series:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        lx, ly = box[0] + (k % 2) * 340, box[3] + 40 + (k // 2) * 20
        draw.line((lx, ly + 7, lx + 24, ly + 7), fill=colour, width=3)
        draw.text((lx + 30, ly), f"{label} (target {target:.2f})", fill="black", font=font)
    return image
