"""Why CLIF wins or does not: stage 1's own measures beside the efficacy table.

Stage 1 can only pull two concepts' tokens apart as far as the frozen vision tower tells their pictures
apart, so the report shows, per pair:
- the tower's own separation of the two characters: leave-one-out nearest-centroid accuracy of its
  normalised image embeddings over fresh renders of each (0.5 is chance; near 1 the tower sees the
  difference, near 0.5 no text-side training can find it in the tower's space);
- for every training run that has a stage 1 (CLIF and its ablations), what stage 1 reported in its
  metrics.json: the cosine between the two concepts' vectors before and after, and held-out image→caption
  retrieval after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch


def tower_separation(tower: Any, characters: Any, pair: Sequence[str], n: int = 16, seed: int = 1) -> float:
    """Leave-one-out nearest-centroid accuracy of `tower`'s image embeddings telling `pair` apart, on `n`
    fresh renders of each (render seeds other than the training pictures')."""
    from clif_core.sandbox.characters import render_character_images

    embeddings, labels = [], []
    for label, name in enumerate(pair):
        pixels = np.stack([r.image for r in render_character_images(characters[name], n, seed=seed)])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        embeddings.append(torch.nn.functional.normalize(tower.encode(images), dim=-1).cpu())
        labels += [label] * n
    x, y = torch.cat(embeddings), torch.tensor(labels)
    right = 0
    for i in range(len(x)):
        keep = torch.arange(len(x)) != i
        centroids = torch.stack([x[keep & (y == c)].mean(dim=0) for c in range(len(pair))])
        right += int(int((centroids @ x[i]).argmax()) == int(y[i]))
    return right / len(x)


def stage1_measures(run_dir: Path) -> Optional[dict[str, float]]:
    """What a run's stage 1 measured (RUN/stage1/metrics.json), or None for a run without stage 1."""
    path = Path(run_dir) / "stage1" / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))["metrics"]
    before, after = metrics["before"], metrics["after"]
    return {"cosine_before": float(np.mean(list(before["concept_cosine"].values()))),
            "cosine_after": float(np.mean(list(after["concept_cosine"].values()))),
            "retrieval_after": float(after.get("retrieval_heldout", {}).get("image_to_caption", float("nan")))}


def diagnostics_lines(pairs: Sequence[tuple[str, str]], separation: Sequence[float],
                      stage1: Sequence[dict[str, list[dict[str, float]]]]) -> list[str]:
    """The report's section: one row per pair and method with a stage 1, means over its training runs."""
    lines = ["## Stage 1 diagnostics", "",
             "The vision tower's own separation of each pair (leave-one-out nearest-centroid accuracy on 16 fresh "
             "renders of each; 0.5 is chance), and what each stage 1 measured: the concepts' cosine before → "
             "after, held-out image→caption retrieval after (means over training runs).", "",
             "| pair | tower separation | method | concept cosine before → after | retrieval after |",
             "|---|---|---|---|---|"]
    for pair, accuracy, methods in zip(pairs, separation, stage1):
        label = "/".join(pair)
        if not methods:
            lines.append(f"| {label} | {accuracy:.2f} | – | – | – |")
        for method, runs in methods.items():
            mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            lines.append(f"| {label} | {accuracy:.2f} | {method} | {mean['cosine_before']:.2f} → "
                         f"{mean['cosine_after']:.2f} | {mean['retrieval_after']:.2f} |")
    return lines
