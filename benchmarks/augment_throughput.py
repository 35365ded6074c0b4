"""Augmentation throughput: fallback segmentation and composition on CPU; SAM's automatic masks on a GPU.

    .venv/bin/python benchmarks/augment_throughput.py                      # CPU, fallback segmenter
    .venv/bin/python benchmarks/augment_throughput.py --sam vit_h          # + SAM timing (GPU when present)

The inputs are synthetic (two figure concepts on noisy gradient backdrops, two common objects), so the
numbers measure the pipeline, not picture content. SAM is built with random weights (no checkpoint
can be downloaded here): the image encoder and the mask decoder cost the same as with real weights,
but random weights pass fewer masks through the quality filters, so the post-processing part of the
automatic generator is cheaper than on real pictures; the "all masks pass" line bounds it from above.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clif_core.augment.common_concepts import CommonConcept
from clif_core.augment.compose import AugmentConfig
from clif_core.augment.dataset import build_dataset
from clif_core.augment.fallback import FallbackSegmenter
from clif_core.concepts.spec import Concept
from clif_core.progress import Reporter


def figure(size: tuple[int, int], head, body, seed: int) -> Image.Image:
    w, h = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, h)[:, None, None]
    bg = np.array([215, 225, 240]) * (1 - ramp) + np.array([180, 195, 215]) * ramp
    img = Image.fromarray(np.clip(bg * np.ones((h, w, 3)), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    cx = w // 2 + int(rng.integers(-w // 10, w // 10))
    d.ellipse((cx - w // 8, h // 10, cx + w // 8, h // 10 + w // 4), fill=head)
    d.rectangle((cx - w // 5, h // 10 + w // 4, cx + w // 5, h - h // 10), fill=body)
    d.rectangle((cx - w // 5, h // 2, cx + w // 5, h // 2 + h // 20), fill=(20, 20, 20))  # a belt: a third part
    arr = np.asarray(img).astype(np.float64) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def inputs(n_images: int, size: tuple[int, int]) -> tuple[list[Concept], list[CommonConcept]]:
    a = [figure(size, (200, 60, 50), (40, 60, 190), s) for s in range(n_images)]
    b = [figure(size, (60, 170, 60), (190, 140, 40), 100 + s) for s in range(n_images)]
    concepts = [Concept("alice", "<alice>", "woman", a, parts=["hair", "belt", "dress"]), Concept("bob", "<bob>", "man", b)]
    chef = [figure(size, (250, 250, 250), (245, 245, 245), 200 + s) for s in range(2)]
    dog = [figure(size, (120, 80, 40), (120, 80, 40), 300 + s) for s in range(2)]
    return concepts, [CommonConcept("chef", chef), CommonConcept("dog", dog)]


def bench_fallback(args: argparse.Namespace) -> None:
    size = (args.image_size * 3 // 4, args.image_size)
    concepts, common = inputs(args.images_per_concept, size)
    config = AugmentConfig.from_ratios(args.samples, resolution=args.resolution, n_parts=args.parts, seed=0)
    n_seg = sum(len(c.images) for c in concepts) + sum(len(c.images) for c in common)
    marks: dict[str, float] = {}

    def progress(step: int, total: int, preview=None) -> None:
        if step == n_seg:
            marks["segmented"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_dataset(concepts, Path(tmp) / "ds", config, FallbackSegmenter(), common,
                      reporter=Reporter(progress=progress, log=lambda m: None))
        t1 = time.perf_counter()
    seg_s, compose_s = marks["segmented"] - t0, t1 - marks["segmented"]
    print(f"fallback segmentation ({size[0]}x{size[1]} pictures, {args.parts} parts): "
          f"{n_seg / seg_s:.2f} images/s ({seg_s / n_seg * 1000:.0f} ms/image)")
    print(f"composition + PNG writing at {args.resolution} px: {args.samples / compose_s:.1f} samples/s")
    print(f"end to end ({n_seg} pictures segmented, {args.samples} samples): {args.samples / (t1 - t0):.1f} samples/s "
          f"in {t1 - t0:.1f} s")


def bench_sam(args: argparse.Namespace) -> None:
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from clif_core.augment.sam import SamSegmenter

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = sam_model_registry[args.sam]().to(device).eval()
    picture = np.asarray(figure((768, 1024), (200, 60, 50), (40, 60, 190), 0))

    def timed(fn) -> float:
        fn()  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.sam_images):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.sam_images

    label = f"SAM {args.sam} (random weights) on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    default = SamAutomaticMaskGenerator(model, points_per_side=args.sam_points)
    print(f"{label}: automatic masks, segment-anything defaults, {args.sam_points}x{args.sam_points} points: "
          f"{timed(lambda: default.generate(picture)):.2f} s/image")
    everything = SamAutomaticMaskGenerator(model, points_per_side=args.sam_points, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    print(f"{label}: automatic masks, all masks pass the filters: {timed(lambda: everything.generate(picture)):.2f} s/image")
    seg = SamSegmenter(model, args.sam)
    image = Image.fromarray(picture)
    print(f"{label}: this pack's SamSegmenter (whole mask + {args.parts} parts): "
          f"{timed(lambda: seg.segment(image, n_parts=args.parts)):.2f} s/image")
    if device.type == "cuda":
        print(f"{label}: peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--images-per-concept", type=int, default=5)
    p.add_argument("--image-size", type=int, default=1024, help="long side of the synthetic concept pictures")
    p.add_argument("--parts", type=int, default=3)
    p.add_argument("--sam", choices=["vit_b", "vit_l", "vit_h"], help="also time SAM (default: vit_h when CUDA is available)")
    p.add_argument("--sam-images", type=int, default=3)
    p.add_argument("--sam-points", type=int, default=32)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    bench_fallback(args)
    if args.sam is None:
        import torch

        args.sam = "vit_h" if torch.cuda.is_available() else None
    if args.sam:
        bench_sam(args)


if __name__ == "__main__":
    main()
