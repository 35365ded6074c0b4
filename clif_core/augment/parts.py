"""From an over-segmentation (superpixels or SAM's automatic masks) to k part regions, and their names.

Both segmentation backends produce many small regions inside the concept mask; CLIF's Region
augmentation wants a few meaningful parts (hair, face, dress…). Regions are merged greedily by Ward's
criterion on mean Lab colour among spatial neighbours, so parts stay connected and similar colours
(one garment) end up together.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.segmentation import slic


def lab_image(rgb: np.ndarray) -> np.ndarray:
    return rgb2lab(rgb.astype(np.float64) / 255.0)


def superpixels(rgb: np.ndarray, mask: np.ndarray, n_segments: int) -> np.ndarray:
    """SLIC superpixels inside `mask` (labels ≥ 1; 0 outside)."""
    if mask.sum() < 4:
        return mask.astype(np.int64)
    labels = slic(
        rgb, n_segments=max(2, n_segments), compactness=10.0, start_label=1, mask=mask, channel_axis=-1
    )
    return np.where(mask, labels, 0).astype(np.int64)


def superpixels_fast(rgb: np.ndarray, mask: np.ndarray, n_segments: int, side: int = 320) -> np.ndarray:
    """`superpixels` computed with the long side at most `side` px and brought back to full size.

    Superpixels only seed the part merge, so their exact edges matter little, and SLIC at full size
    dominates the fallback's run time. Mask pixels the small labels miss take the nearest label.
    """
    h, w = mask.shape
    scale = side / max(h, w)
    if scale >= 1:
        return superpixels(rgb, mask, n_segments)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127
    small = superpixels(small_rgb, small_mask, n_segments)
    up = np.asarray(Image.fromarray(small.astype(np.int32), "I").resize((w, h), Image.NEAREST)).astype(np.int64)
    up = np.where(mask, up, 0)
    holes = mask & (up == 0)
    if holes.any():
        if not (up > 0).any():
            return mask.astype(np.int64)
        _, (iy, ix) = ndimage.distance_transform_edt(up == 0, return_indices=True)
        up[holes] = up[iy[holes], ix[holes]]
    return up


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        edge = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[edge], b[edge])
        hi = np.maximum(a[edge], b[edge])
        pairs.update(zip(lo.tolist(), hi.tolist()))
    return pairs


def merge_regions(labels: np.ndarray, lab: np.ndarray, k: int, same_colour: float = 10.0) -> list[np.ndarray]:
    """Merge labelled regions (0 = outside) into at most k connected parts; returns bool masks.

    Ward's cost n_a·n_b/(n_a+n_b)·|c_a − c_b|² between neighbours: small and similar regions merge first.
    Neighbours whose mean colours are closer than `same_colour` (ΔE) merge even below k parts, so a
    one-colour garment is not cut in pieces. Islands merge with the nearest centroid when needed.
    (Over 60 lines: one agglomerative loop whose state, the region graph, its sizes and colours, is shared.)
    """
    ids = [int(i) for i in np.unique(labels) if i > 0]
    if not ids:
        return []
    flat = labels.ravel()
    count = np.bincount(flat)
    ys, xs = np.indices(labels.shape)
    sums = [np.bincount(flat, weights=ch.ravel(), minlength=len(count)) for ch in (*np.moveaxis(lab, -1, 0), ys, xs)]
    size = {i: float(count[i]) for i in ids}
    colour = {i: np.array([s[i] for s in sums[:3]]) / count[i] for i in ids}
    centre = {i: np.array([s[i] for s in sums[3:]]) / count[i] for i in ids}
    parent = {i: i for i in ids}
    neighbours = {i: set() for i in ids}
    for a, b in _adjacent_pairs(labels):
        neighbours[a].add(b)
        neighbours[b].add(a)

    def cost(a: int, b: int) -> float:
        return size[a] * size[b] / (size[a] + size[b]) * float(np.sum((colour[a] - colour[b]) ** 2))

    def similar(a: int, b: int) -> bool:
        return float(np.sum((colour[a] - colour[b]) ** 2)) < same_colour**2

    alive = set(ids)
    while len(alive) > 1:
        best: Optional[tuple[float, int, int]] = None
        for a in sorted(alive):
            for b in sorted(neighbours[a]):
                if b > a and (len(alive) > k or similar(a, b)):
                    c = (cost(a, b), a, b)
                    best = c if best is None or c < best else best
        if best is None and len(alive) <= k:
            break
        if best is None:  # only islands left: join the two closest centroids
            order = sorted(alive)
            best = min(
                (float(np.sum((centre[a] - centre[b]) ** 2)), a, b) for ai, a in enumerate(order) for b in order[ai + 1 :]
            )
        _, a, b = best
        n = size[a] + size[b]
        colour[a] = (colour[a] * size[a] + colour[b] * size[b]) / n
        centre[a] = (centre[a] * size[a] + centre[b] * size[b]) / n
        size[a] = n
        for c in neighbours.pop(b):
            neighbours[c].discard(b)
            if c != a:
                neighbours[c].add(a)
                neighbours[a].add(c)
        neighbours[a].discard(a)
        parent[b] = a
        alive.discard(b)

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int64)
    for i in ids:
        lookup[i] = root(i)
    merged = lookup[labels]
    return [merged == r for r in sorted(alive)]


def order_top_to_bottom(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sort part masks by the height of their centroid (then by x), the order users list parts in."""

    def key(m: np.ndarray) -> tuple[float, float]:
        ys, xs = np.nonzero(m)
        return (float(ys.mean()), float(xs.mean())) if len(ys) else (0.0, 0.0)

    return sorted(parts, key=key)


def _labels_for(n: int, names: Sequence[str]) -> list[str]:
    """n labels spread over `names` in order (2 of upper/middle/lower → upper, lower)."""
    if n == 1:
        return [""]
    return [names[round(i * (len(names) - 1) / (n - 1))] for i in range(n)]


def describe_parts(parts: Sequence[np.ndarray], whole: np.ndarray, row_gap: float = 0.15) -> list[str]:
    """Generic names from where parts sit relative to each other: "upper part", "lower left part"…

    Parts whose centroids lie within `row_gap` of the concept's height form one row; rows are named
    top to bottom, parts in a row left to right. Names that still repeat get a number.
    """
    ys, _ = np.nonzero(whole)
    height = max(1, int(ys.max() - ys.min() + 1))
    centres = []
    for m in parts:
        py, px = np.nonzero(m)
        centres.append((float(py.mean()), float(px.mean())))
    order = sorted(range(len(parts)), key=lambda i: centres[i])
    rows: list[list[int]] = []
    for i in order:
        if rows and centres[i][0] - centres[rows[-1][0]][0] <= row_gap * height:
            rows[-1].append(i)
        else:
            rows.append([i])
    vertical = _labels_for(len(rows), ["top", "upper", "middle", "lower", "bottom"] if len(rows) > 3 else ["upper", "middle", "lower"])
    labels = [""] * len(parts)
    for row, v in zip(rows, vertical):
        row.sort(key=lambda i: centres[i][1])
        horizontal = _labels_for(len(row), ["left", "center", "right"])
        for i, h in zip(row, horizontal):
            labels[i] = " ".join(w for w in (v, h, "part") if w)
    counts: dict[str, int] = {}
    out = []
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} {counts[label]}")
    return out


def name_parts(parts: Sequence[np.ndarray], whole: np.ndarray, user_names: Sequence[str]) -> list[str]:
    """The user's names in order when there are as many parts as names, else generic descriptions."""
    if user_names and len(user_names) == len(parts):
        return list(user_names)
    return describe_parts(parts, whole)
