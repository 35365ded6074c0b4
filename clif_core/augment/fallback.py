"""The weight-free segmenter: background estimate from the image border, superpixels for parts.

Foreground: the border strip's colours (in Lab) are clustered into up to three background colours;
a pixel is foreground when it is farther from all of them than the border itself varies (and at
least `min_contrast` ΔE). Small specks are opened away, holes filled, and components much smaller
than the largest dropped. Parts: SLIC superpixels inside the mask, merged into k regions.

It is reliable on what concept pictures for this pack usually are (a subject on a plain or softly
varying backdrop, studio shots, renders, cut-outs) and it is not a substitute for SAM on cluttered
photographs: a subject that touches the border in a colour that covers much of the border is
treated as background there, a background that changes colour in the middle of the picture (a room,
a street) becomes foreground, and a subject the same colour as the backdrop is lost. Parts follow
colour, not semantics: a face and a hand of the same skin tone may share a part.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.cluster.vq import kmeans2

from ..errors import ClifError
from .parts import lab_image, merge_regions, superpixels_fast
from .segment import (
    Box,
    Point,
    Segmentation,
    SegmentationFailed,
    check_box,
    check_points,
)


@dataclass
class FallbackSegmenter:
    """`border` is the width of the border strip as a fraction of the short side; `min_contrast` the
    smallest Lab distance (ΔE) from the background counted as subject; `keep_fraction` the smallest
    component kept, relative to the largest; `segments_per_part` the superpixels made per part."""

    border: float = 0.04
    min_contrast: float = 12.0
    keep_fraction: float = 0.2
    segments_per_part: int = 12

    def describe(self) -> str:
        return f"fallback(border={self.border}, min_contrast={self.min_contrast})"

    def segment(
        self,
        image: Image.Image,
        prompt_box: Optional[Box] = None,
        mask: Optional[np.ndarray] = None,
        n_parts: int = 4,
        prompt_points: Optional[Sequence[Point]] = None,
    ) -> Segmentation:
        rgb = np.asarray(image.convert("RGB"))
        lab = lab_image(rgb)
        if mask is None:
            box = check_box(prompt_box, image.size) or (0, 0, image.size[0], image.size[1])
            points = check_points(prompt_points, image.size)
            x0, y0, x1, y1 = box
            if points and any(not (x0 <= x < x1 and y0 <= y < y1) for x, y in points):
                raise ClifError(f"prompt point(s) {points} must lie inside the prompt box {box}.")
            local = [(x - x0, y - y0) for x, y in points] if points else None
            mask = np.zeros(rgb.shape[:2], dtype=bool)
            mask[y0:y1, x0:x1] = self.foreground(lab[y0:y1, x0:x1], local)
        mask = mask.astype(bool)
        parts = self.parts(rgb, lab, mask, n_parts) if n_parts > 0 else []
        return Segmentation(mask=mask, parts=parts)

    def foreground(self, lab: np.ndarray, points: Optional[list[Point]] = None) -> np.ndarray:
        """The subject: components under `points` when given, else the large components."""
        h, w = lab.shape[:2]
        b = max(2, int(round(min(h, w) * self.border)))
        strip = np.ones((h, w), dtype=bool)
        strip[b:-b, b:-b] = False
        border = lab[strip]
        centres = self._background_colours(border)
        dist = np.min([np.linalg.norm(lab - c, axis=-1) for c in centres], axis=0)
        # How much the backdrop itself varies; the top decile is left out, it may be the subject touching the border.
        spread = float(np.quantile(dist[strip], 0.9))
        threshold = max(self.min_contrast, 1.5 * spread)
        fg = dist > threshold
        radius = max(1, min(h, w) // 200)
        fg = ndimage.binary_opening(fg, structure=np.ones((2 * radius + 1, 2 * radius + 1), bool))
        fg = ndimage.binary_fill_holes(fg)
        labels, n = ndimage.label(fg)
        if n == 0:
            raise SegmentationFailed(
                "shows no subject the fallback segmenter can tell from its background (too little contrast). "
                "Give a mask (masks/<stem>.png or a transparent PNG) or use the 'sam' segmenter."
            )
        if points:
            keep = sorted({int(labels[y, x]) for x, y in points} - {0})
            if not keep:
                raise SegmentationFailed(
                    "has only backdrop under the prompt point(s); put them on the subject or give a mask."
                )
        else:
            sizes = np.bincount(labels.ravel())[1:]
            keep = list(np.flatnonzero(sizes >= self.keep_fraction * sizes.max()) + 1)
        fg = np.isin(labels, keep)
        if fg.mean() > 0.98:
            raise SegmentationFailed(
                "seems to have no plain background (the fallback segmenter found the whole picture to be the "
                "subject). Give a mask (masks/<stem>.png or a transparent PNG) or use the 'sam' segmenter."
            )
        return fg

    @staticmethod
    def _background_colours(border: np.ndarray, k: int = 3, min_share: float = 0.1) -> np.ndarray:
        """Up to k border colours, each covering at least `min_share` of the border; deterministic init."""
        lum = border[:, 0]
        init = np.stack([border[np.argsort(lum)[int(q * (len(lum) - 1))]] for q in np.linspace(0.1, 0.9, k)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "one of the clusters is empty" on one-colour borders
            centres, assign = kmeans2(border, init, minit="matrix", iter=20)
        share = np.bincount(assign, minlength=k) / len(assign)
        keep = share >= min_share
        return centres[keep] if keep.any() else centres[[int(np.argmax(share))]]

    def parts(self, rgb: np.ndarray, lab: np.ndarray, mask: np.ndarray, k: int) -> list[np.ndarray]:
        labels = superpixels_fast(rgb, mask, n_segments=k * self.segments_per_part)
        return merge_regions(labels, lab, k)
