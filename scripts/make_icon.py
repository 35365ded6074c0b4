"""Draw the pack's registry icon, docs/icon.png (pyproject.toml [tool.comfy] Icon), with Pillow.

    .venv/bin/python scripts/make_icon.py

Two overlapping concepts kept apart (a circle and a square, as in the sandbox) and a third struck out:
customization and erasure. Drawn from fixed shapes, so re-running writes the same picture.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ICON = Path(__file__).resolve().parents[1] / "docs" / "icon.png"
SIZE = 256


def draw_icon() -> Image.Image:
    scale = 4  # drawn large and scaled down: smooth edges without antialiasing support in ImageDraw
    side = SIZE * scale
    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    u = side / 16
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=3 * u, fill=(32, 36, 48, 255))
    draw.ellipse((2 * u, 3 * u, 8.5 * u, 9.5 * u), fill=(232, 88, 72, 255))
    draw.rectangle((7.5 * u, 6.5 * u, 13.5 * u, 12.5 * u), fill=(72, 160, 232, 255))
    draw.ellipse((9.5 * u, 1.5 * u, 14 * u, 6 * u), outline=(240, 200, 80, 255), width=int(0.6 * u))
    draw.line((9.6 * u, 6 * u, 14 * u, 1.6 * u), fill=(240, 200, 80, 255), width=int(0.6 * u))
    return image.resize((SIZE, SIZE), Image.LANCZOS)


if __name__ == "__main__":
    ICON.parent.mkdir(parents=True, exist_ok=True)
    draw_icon().save(ICON, optimize=True)
    print(f"wrote {ICON.relative_to(ICON.parents[1])}")
