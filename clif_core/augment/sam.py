"""segment-anything backend: SamPredictor for the whole concept, the automatic mask generator for parts.

Checkpoints are the official `sam_vit_{b,l,h}_*.pth` files (as found in ComfyUI's models/sams) or
the same tensors as .safetensors. They are read with `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers, and the variant is told from the weights' shapes, never
from the file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ClifError
from .parts import lab_image, merge_regions, superpixels
from .segment import (
    Box,
    Point,
    Segmentation,
    SegmentationFailed,
    check_box,
    check_points,
    mask_box,
)

# embed width of the image encoder and its number of blocks, per official variant
SAM_VARIANTS = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def read_sam_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a SAM checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ClifError(f"SAM checkpoint {path} does not exist; put sam_vit_b/l/h .pth files in ComfyUI's models/sams.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file at all
        raise ClifError(
            f"SAM checkpoint {path} cannot be read as tensors ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"It may be truncated (download it again) or hold pickled objects, which are never loaded."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and _PATCH_KEY not in state and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClifError(f"SAM checkpoint {path} is not a dictionary of tensors; it is not a segment-anything checkpoint.")
    return dict(state)


def detect_sam_variant(state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> str:
    """'vit_b', 'vit_l' or 'vit_h' from the image encoder's width and depth; ClifError otherwise."""
    supported = "official segment-anything checkpoints: vit_b (sam_vit_b_01ec64.pth), vit_l, vit_h"
    patch = state.get(_PATCH_KEY)
    if patch is None or not any(k.startswith("mask_decoder.") for k in state):
        sample = ", ".join(list(state)[:3])
        raise ClifError(
            f"{where} is not a segment-anything checkpoint (no {_PATCH_KEY} / mask_decoder weights; keys start "
            f"with {sample}). Supported: {supported}."
        )
    width = int(patch.shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, (w, d) in SAM_VARIANTS.items():
        if (w, d) == (width, depth):
            return name
    raise ClifError(
        f"{where} has a SAM image encoder of width {width} and {depth} blocks, which matches no known variant "
        f"(SAM-HQ, MobileSAM, EfficientSAM and SAM 2 are not supported). Supported: {supported}."
    )


def load_sam(path: str | Path, device: Optional[str | torch.device] = None) -> tuple[Any, str]:
    """Build the detected variant with segment-anything's own builder and load the weights strictly."""
    from segment_anything import sam_model_registry

    state = read_sam_state_dict(path)
    variant = detect_sam_variant(state, where=f"SAM checkpoint {path}")
    model = sam_model_registry[variant]()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ClifError(
            f"SAM checkpoint {path} looks like {variant} but does not fit it: {len(missing)} missing tensors "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}). Only official "
            f"segment-anything checkpoints are supported."
        )
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), variant


@dataclass
class SamOptions:
    """Automatic mask generator settings used for part regions (inside the concept's box).

    The thresholds are lower than segment-anything's defaults (0.88 / 0.95): every accepted region only
    seeds the merge into k parts, and leftover pixels are filled by superpixels anyway.
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.85
    box_margin: float = 0.05
    border_touch_limit: float = 0.3
    segments_per_part: int = 12


class SamSegmenter:
    """Whole mask: box and/or point prompts (else the whole picture as the box) → the largest confident
    candidate that does not hug the image border. Parts: automatic masks on the concept's crop, smallest-on-top,
    gaps filled with superpixels, merged into k regions."""

    def __init__(
        self, model: Any, variant: str = "custom", options: Optional[SamOptions] = None, source: Optional[str] = None
    ) -> None:
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        self.model = model
        self.variant = variant
        self.source = source  # the checkpoint's file name, for manifests and dataset keys
        self.options = options or SamOptions()
        self.predictor = SamPredictor(model)
        o = self.options
        self.generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=o.points_per_side,
            points_per_batch=o.points_per_batch,
            pred_iou_thresh=o.pred_iou_thresh,
            stability_score_thresh=o.stability_score_thresh,
            output_mode="binary_mask",
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: Optional[str | torch.device] = None, options: Optional[SamOptions] = None
    ) -> "SamSegmenter":
        model, variant = load_sam(path, device)
        return cls(model, variant, options, source=Path(path).name)

    def describe(self) -> str:
        return f"sam({self.variant}, {self.source})" if self.source else f"sam({self.variant})"

    def segment(
        self,
        image: Image.Image,
        prompt_box: Optional[Box] = None,
        mask: Optional[np.ndarray] = None,
        n_parts: int = 4,
        prompt_points: Optional[Sequence[Point]] = None,
    ) -> Segmentation:
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        with torch.inference_mode():
            if mask is None:
                mask = self.whole_mask(rgb, check_box(prompt_box, image.size), check_points(prompt_points, image.size))
            mask = mask.astype(bool)
            parts = self.parts(rgb, mask, n_parts) if n_parts > 0 else []
        return Segmentation(mask=mask, parts=parts)

    def whole_mask(self, rgb: np.ndarray, box: Optional[Box], points: Optional[list[Point]] = None) -> np.ndarray:
        """Box and/or foreground points as prompts; with neither, the whole picture is the box."""
        h, w = rgb.shape[:2]
        if box is None and not points:
            box = (0, 0, w, h)
        self.predictor.set_image(rgb)
        try:
            masks, scores, _ = self.predictor.predict(
                point_coords=np.array(points, dtype=np.float32) if points else None,
                point_labels=np.ones(len(points), dtype=np.int64) if points else None,
                box=np.array(box, dtype=np.float32) if box is not None else None,
                multimask_output=True,
            )
        finally:
            self.predictor.reset_image()
        border = np.zeros((h, w), dtype=bool)
        border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
        candidates = []  # (score, area, mask, hugs the border)
        for m, score in zip(masks, scores):
            m = m.astype(bool)
            if m.any() and m.mean() <= 0.98:
                hugs = (m & border).sum() / border.sum() > self.options.border_touch_limit
                candidates.append((float(score), int(m.sum()), m, hugs))
        if not candidates:
            raise SegmentationFailed("gave SAM no usable mask (all empty or the whole picture). Give a mask or a prompt box.")
        # Masks hugging the border are usually the backdrop; use them only when nothing else came back.
        # Of the confident rest (predicted IoU within 0.15 of the best) the largest is the whole subject.
        pool = [c for c in candidates if not c[3]] or candidates
        best = max(c[0] for c in pool)
        return max((c for c in pool if c[0] >= best - 0.15), key=lambda c: c[1])[2]

    def parts(self, rgb: np.ndarray, mask: np.ndarray, k: int) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = mask_box(mask)
        mx, my = int((x1 - x0) * self.options.box_margin), int((y1 - y0) * self.options.box_margin)
        x0, y0, x1, y1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
        crop_mask = mask[y0:y1, x0:x1]
        records = self.generator.generate(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        labels = np.zeros(crop_mask.shape, dtype=np.int64)
        # Largest first so that smaller (finer) regions end up on top.
        for n, rec in enumerate(sorted(records, key=lambda r: -int(r["area"])), start=1):
            seg = rec["segmentation"].astype(bool) & crop_mask
            if seg.sum() >= max(4, 0.005 * crop_mask.sum()):
                labels[seg] = n
        gaps = crop_mask & (labels == 0)
        if gaps.any():
            crop = rgb[y0:y1, x0:x1]
            fill = superpixels(crop, gaps, n_segments=max(2, k * self.options.segments_per_part))
            labels[gaps] = fill[gaps] + labels.max()
        merged = merge_regions(labels, lab_image(rgb[y0:y1, x0:x1]), k)
        out = []
        for m in merged:
            full = np.zeros((h, w), dtype=bool)
            full[y0:y1, x0:x1] = m
            out.append(full)
        return out
