"""Copy the browser test's screenshots into the docs: whole graphs for the README gallery, single groups for
docs/tutorial.md. Run the browser test first (it writes test-artefacts/browser/):

    .venv/bin/python -m pytest tests/test_browser_workflows.py && .venv/bin/python scripts/docs_images.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artefacts" / "browser"
GALLERY = REPO / "docs" / "images" / "gallery"
TUTORIAL = REPO / "docs" / "images" / "tutorial"
TUTORIAL_SHOTS = [f"clif_1_train_two_concepts.group{i}" for i in range(1, 6)] + [
    "clif_2_multi_concept_sampling.group2", "clif_3_concepts_in_stock_graph.group1"]


def main() -> None:
    graphs = sorted(p for p in SHOTS.glob("*.png") if p.stem.count(".") == 0)
    if not graphs:
        raise SystemExit(f"no screenshots in {SHOTS}: run tests/test_browser_workflows.py first")
    GALLERY.mkdir(parents=True, exist_ok=True)
    TUTORIAL.mkdir(parents=True, exist_ok=True)
    for shot in graphs:
        image = Image.open(shot).convert("RGB")
        image.thumbnail((1600, 1000))
        image.save(GALLERY / f"{shot.stem}.jpg", quality=85)
    for name in TUTORIAL_SHOTS:
        Image.open(SHOTS / f"{name}.png").convert("RGB").save(TUTORIAL / f"{name}.jpg", quality=85)
    print(f"{len(graphs)} graphs → {GALLERY.relative_to(REPO)}, {len(TUTORIAL_SHOTS)} groups → {TUTORIAL.relative_to(REPO)}")


if __name__ == "__main__":
    main()
