"""The loss curve of a run: a CSV (step, loss, lr) and a PNG drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from clif_core.errors import ClifError
from clif_core.fileio import atomic_path, write_text_atomic
from clif_core.sheets import load_font

History = Sequence[tuple[int, float, float]]  # (step, loss, lr)

_HEADER = ("step", "loss", "lr")


def write_loss_csv(history: History, path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_HEADER)
    for step, loss, lr in history:
        writer.writerow((step, repr(float(loss)), repr(float(lr))))
    return write_text_atomic(path, buf.getvalue())


def read_loss_csv(path: Path) -> list[tuple[int, float, float]]:
    """The history written by `write_loss_csv`; a missing or damaged file is a ClifError naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows or tuple(rows[0]) != _HEADER:
            raise ValueError(f"the first line is not {','.join(_HEADER)}")
        return [(int(s), float(loss), float(lr)) for s, loss, lr in rows[1:]]
    except (OSError, ValueError) as err:
        raise ClifError(f"loss curve {path} cannot be read ({err}); it is written by a training run") from None


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + 1e-12 * abs(hi):
        ticks.append(value)
        value += step
    return ticks


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` values (a readable trend on a noisy diffusion loss)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_loss_curve(
    curves: Sequence[tuple[str, History]], width: int = 768, height: int = 320
) -> Image.Image:
    """One panel per (title, history), stacked: raw loss in light blue, its trailing mean in dark blue."""
    panels = [(title, list(h)) for title, h in curves] or [("loss", [])]
    image = Image.new("RGB", (width, height * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    font = load_font(13)
    left, right, top, bottom = 64, 16, 28, 36
    for p, (title, history) in enumerate(panels):
        y0 = p * height
        box = (left, y0 + top, width - right, y0 + height - bottom)
        draw.text((left, y0 + 6), title, fill="black", font=font)
        draw.rectangle(box, outline=(160, 160, 160))
        points = [(s, loss) for s, loss, _ in history if math.isfinite(loss)]
        if not points:
            draw.text((box[0] + 8, box[1] + 8), "no steps yet", fill=(120, 120, 120), font=font)
            continue
        steps = [s for s, _ in points]
        losses = [v for _, v in points]
        s_lo, s_hi = min(steps), max(max(steps), min(steps) + 1)
        v_lo, v_hi = min(losses), max(losses)
        if v_hi - v_lo < 1e-12:
            v_lo, v_hi = v_lo - 0.5, v_hi + 0.5
        pad = 0.05 * (v_hi - v_lo)
        v_lo, v_hi = v_lo - pad, v_hi + pad

        def xy(step: float, value: float) -> tuple[float, float]:
            x = box[0] + (step - s_lo) / (s_hi - s_lo) * (box[2] - box[0])
            y = box[3] - (value - v_lo) / (v_hi - v_lo) * (box[3] - box[1])
            return x, y

        for tick in ticks(v_lo, v_hi):
            _, y = xy(s_lo, tick)
            draw.line((box[0], y, box[2], y), fill=(232, 232, 232))
            draw.text((4, y - 7), f"{tick:.3g}", fill="black", font=font)
        for tick in ticks(s_lo, s_hi):
            x, _ = xy(tick, v_lo)
            draw.line((x, box[3], x, box[3] + 4), fill="black")
            draw.text((x - 10, box[3] + 6), f"{tick:g}", fill="black", font=font)
        draw.text((box[2] - 30, box[3] + 18), "step", fill="black", font=font)
        if len(points) == 1:
            x, y = xy(*points[0])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(30, 80, 200))
            continue
        draw.line([xy(s, v) for s, v in points], fill=(150, 190, 240), width=1)
        trend = _smooth(losses, max(1, len(losses) // 20))
        draw.line([xy(s, v) for s, v in zip(steps, trend)], fill=(20, 60, 170), width=2)
    return image


def save_loss_png(curves: Sequence[tuple[str, History]], path: Path) -> Path:
    with atomic_path(path) as tmp:
        draw_loss_curve(curves).save(tmp, format="PNG")
    return Path(path)
