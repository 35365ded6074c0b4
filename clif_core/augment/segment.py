"""One segmentation interface, three backends: segment-anything, a weight-free fallback, user masks.

`Segmenter.segment(image, prompt_box=None, mask=None, n_parts=4, prompt_points=None)` returns the
whole-concept mask and its part regions; the box and the points (on the concept) are optional prompts. A `mask` passed in is the user's and always wins: the backend then only splits it
into parts. `segment_concept` applies this to every image of a concept, with the user's own part
masks winning over automatic parts, and names the parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from ..concepts.spec import Concept
from ..errors import ClifError
from ..progress import SILENT, Reporter
from .parts import name_parts, order_top_to_bottom

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1/y1 exclusive."""
Point = tuple[int, int]
"""(x, y) in pixels of a point on the concept."""


class SegmentationFailed(ClifError):
    """The backend found no subject; `segment_concept` adds the file name to the message."""


@dataclass
class Segmentation:
    """`mask`: bool [H, W] (True = concept). `parts`: bool masks inside it, ordered top to bottom.

    `part_names[i]` names `parts[i]`: the user's part names or generic descriptions ("upper part").
    """

    mask: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)
    part_names: list[str] = field(default_factory=list)


class Segmenter(Protocol):
    def segment(
        self,
        image: Image.Image,
        prompt_box: Optional[Box] = None,
        mask: Optional[np.ndarray] = None,
        n_parts: int = 4,
        prompt_points: Optional[Sequence[Point]] = None,
    ) -> Segmentation: ...

    def describe(self) -> str:
        """A short text for manifests and logs, e.g. "fallback(slic, k=4)"."""
        ...


class UserMaskSegmenter:
    """Only the user's masks: whole-concept masks are required, parts come only from user part masks."""

    def segment(
        self,
        image: Image.Image,
        prompt_box: Optional[Box] = None,
        mask: Optional[np.ndarray] = None,
        n_parts: int = 4,
        prompt_points: Optional[Sequence[Point]] = None,
    ) -> Segmentation:
        if mask is None:
            raise SegmentationFailed(
                "has no mask, and the 'masks' segmenter only uses masks you give. Add masks/<stem>.png "
                "(white = concept), use a transparent PNG, or pick the 'fallback' or 'sam' segmenter."
            )
        return Segmentation(mask=mask.astype(bool))

    def describe(self) -> str:
        return "user masks"


def mask_box(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def check_box(box: Optional[Box], size: tuple[int, int]) -> Optional[Box]:
    if box is None:
        return None
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = size
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ClifError(f"prompt box {tuple(box)} does not overlap the {w}x{h} image; give (x0, y0, x1, y1) in pixels.")
    return x0, y0, x1, y1


def check_points(points: Optional[Sequence[Point]], size: tuple[int, int]) -> Optional[list[Point]]:
    if not points:
        return None
    w, h = size
    out = [(int(round(x)), int(round(y))) for x, y in points]
    bad = [p for p in out if not (0 <= p[0] < w and 0 <= p[1] < h)]
    if bad:
        raise ClifError(f"prompt point(s) {bad} lie outside the {w}x{h} image; give (x, y) in pixels.")
    return out


def segment_concept_image(concept: Concept, i: int, segmenter: Segmenter, n_parts: int = 4) -> Segmentation:
    """Segment `concept.images[i]`; its user mask and user part masks win over the backend.

    User part masks replace automatic parts (clipped to a user concept mask; added to a computed one).

    `n_parts` applies when the concept has no part list; with one, as many parts as names are made and
    named in list order, top to bottom.
    """
    user_mask = concept.masks[i]
    user_parts = concept.part_masks[i]
    try:
        if user_mask is not None and user_parts:
            seg = Segmentation(mask=user_mask.astype(bool))
        else:
            seg = segmenter.segment(concept.images[i], mask=user_mask, n_parts=len(concept.parts) or n_parts)
    except SegmentationFailed as exc:
        raise ClifError(f"concept {concept.name!r}: {concept.sources[i]} {exc}") from exc
    if user_parts:
        names = [p for p in (concept.parts or list(user_parts)) if p in user_parts]
        if user_mask is None:  # the user's parts are part of the concept, whatever the backend found
            for p in names:
                seg.mask = seg.mask | user_parts[p]
        seg.parts = [user_parts[p] & seg.mask for p in names]
        seg.part_names = names
        empty = [p for p, m in zip(names, seg.parts) if not m.any()]
        if empty:
            raise ClifError(
                f"concept {concept.name!r}: part mask(s) {empty} of {concept.sources[i]} lie outside the "
                f"concept's mask; draw them on the concept."
            )
    else:
        seg.parts = order_top_to_bottom([p & seg.mask for p in seg.parts if (p & seg.mask).any()])
        seg.part_names = name_parts(seg.parts, seg.mask, concept.parts)
    return seg


def segment_concept(
    concept: Concept, segmenter: Segmenter, n_parts: int = 4, reporter: Reporter = SILENT
) -> list[Segmentation]:
    """`segment_concept_image` for every image of the concept."""
    out = []
    for i in range(len(concept.images)):
        reporter.check_cancel()
        out.append(segment_concept_image(concept, i, segmenter, n_parts))
    return out


def segment_whole(
    image: Image.Image,
    mask: Optional[np.ndarray],
    source: str,
    segmenter: Segmenter,
    whole_on_failure: bool = False,
    reporter: Reporter = SILENT,
) -> np.ndarray:
    """The whole-object mask only (for common concepts); a given mask wins.

    With `whole_on_failure` a picture the backend finds no subject in is used whole (with a note) instead
    of failing: generated pictures often show a full scene, and the user cannot fix them by hand.
    """
    if mask is not None:
        return mask.astype(bool)
    try:
        return segmenter.segment(image, n_parts=0).mask
    except SegmentationFailed as exc:
        if not whole_on_failure:
            raise ClifError(f"{source} {exc}") from exc
        reporter.log(f"note: {source} {exc} The whole picture is used for it.")
        return np.ones((image.height, image.width), dtype=bool)


def with_segmentation(concept: Concept, segmentations: Sequence[Segmentation]) -> Concept:
    """A copy of the concept whose masks and part masks are the given segmentations (the input is unchanged).

    The result needs no segmenter any more: its masks count as the user's. Its part list is every part
    name in the order first seen, so pictures whose parts got generic names keep them.
    """
    if len(segmentations) != len(concept.images):
        raise ClifError(
            f"concept {concept.name!r}: {len(segmentations)} segmentation(s) for {len(concept.images)} picture(s)."
        )
    names: list[str] = []
    for seg in segmentations:
        names += [n for n in seg.part_names if n not in names]
    return replace(
        concept,
        images=list(concept.images),
        masks=[seg.mask.copy() for seg in segmentations],
        parts=names,
        part_masks=[{n: p.copy() for n, p in zip(seg.part_names, seg.parts)} for seg in segmentations],
        sources=list(concept.sources),
    )
