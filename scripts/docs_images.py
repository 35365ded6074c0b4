"""Copy the browser test's group screenshots (every group of every shipped workflow at 100% zoom, so the
widgets can be read) into docs/images/gallery/, where the README gallery and docs/tutorial.md show them beside
the workflows' real outputs (workflows/*.jpg). Run the browser test first (it writes test-artefacts/browser/):

    .venv/bin/python -m pytest tests/test_browser_workflows.py && .venv/bin/python scripts/docs_images.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artefacts" / "browser"
GALLERY = REPO / "docs" / "images" / "gallery"


def main() -> None:
    shots = sorted(SHOTS.glob("*.group*.png"))
    if not shots:
        raise SystemExit(f"no group screenshots in {SHOTS}: run tests/test_browser_workflows.py first")
    GALLERY.mkdir(parents=True, exist_ok=True)
    for stale in GALLERY.glob("*.jpg"):  # the folder holds this script's copies only
        stale.unlink()
    for shot in shots:
        Image.open(shot).convert("RGB").save(GALLERY / f"{shot.stem}.jpg", quality=88)
    print(f"{len(shots)} group screenshots → {GALLERY.relative_to(REPO)}")


if __name__ == "__main__":
    main()
