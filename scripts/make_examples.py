"""Render the example pictures the shipped workflows read (committed under bundled_input/).

    .venv/bin/python scripts/make_examples.py

Two confusable sandbox characters (ada, ida: same body plan, different body colour and detail) as concept
folders with masks, and one sandbox scene with a circle for the purification workflow. Everything is drawn from
fixed seeds, so re-running writes the same bytes. ComfyUI reads them from its input/ folder, where
nodes/bundled_examples.py copies them when the pack starts.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXAMPLES = REPO / "bundled_input"
CHARACTERS = ("ada", "ida")
PURIFY_PICTURE = "clif_example_circle.png"
PURIFY_WORD = "circle"


def main() -> None:
    from clif_core.sandbox.characters import load_characters, write_character_folder
    from clif_core.sandbox.world import render

    chars = load_characters()
    folder = EXAMPLES / "clif_examples"
    shutil.rmtree(folder, ignore_errors=True)
    for name in CHARACTERS:
        write_character_folder(chars.characters[name], folder / name, n=5, seed=0)
    seed = next(s for s in range(10_000) if PURIFY_WORD in render(s).caption)
    r = render(seed)
    r.pil().save(EXAMPLES / PURIFY_PICTURE)
    print(f"wrote {folder} ({', '.join(CHARACTERS)}) and {PURIFY_PICTURE}: seed {seed}, '{r.caption}'")


if __name__ == "__main__":
    main()
