"""`clif augment`: build the augmented dataset from concept folders on the command line.

    clif augment --concept photos/alice "<alice>" woman "hair,face,dress" \\
                 --concept photos/bob "<bob>" man \\
                 --common-dir photos/common --common chef dog "jean jacket" \\
                 --base-model models/checkpoints/sd15.safetensors \\
                 --segmenter sam --sam-checkpoint models/sams/sam_vit_b_01ec64.pth \\
                 --global 40 --region 40 --mix 20 --single 10 --seed 0 --out datasets/alice_bob
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ClifError
from ..images import MIN_SIDE
from ..options import AUGMENT, add_option
from ..validation import cli_int


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `augment` command to a `clif` argparse subparsers object; `args.func(args)` runs it."""
    p = subparsers.add_parser(
        "augment",
        help="build CLIF's Global/Region/Mix training set from a few pictures per concept",
        description="Segment concept pictures and compose the augmented dataset both training stages read.",
    )
    p.add_argument(
        "--concept", nargs="+", action="append", required=True, metavar="ARG",
        help="FOLDER TOKEN CLASS [PARTS]: a folder of pictures (masks in FOLDER/masks/), its placeholder token, "
        "its class word, optionally comma-separated part names listed top to bottom. Repeat per concept.",
    )
    p.add_argument("--common", nargs="*", default=[], metavar="WORD", help="common concept words (e.g. chef dog)")
    p.add_argument("--common-dir", help="folder with one subfolder of pictures per common word")
    p.add_argument("--base-model", help="checkpoint (.safetensors) or diffusers folder that draws the common words "
                   "without a folder ('a photo of WORD'), cached by the model's fingerprint")
    p.add_argument("--common-images", type=cli_int(1, 64), default=4, help="pictures generated per common word")
    p.add_argument("--common-seed", type=cli_int(0, 2**63 - 1), default=0, help="seed of the generated pictures")
    p.add_argument("--common-steps", type=cli_int(1, 200), default=25, help="denoising steps per generated picture")
    p.add_argument("--common-cache", help="where generated pictures are kept (default: clif_common/ beside --out)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder (once the new one is complete)")
    p.add_argument("--segmenter", choices=["auto", "sam", "fallback", "masks"], default="auto",
                   help="auto: SAM when --sam-checkpoint is given, else the weight-free fallback")
    p.add_argument("--sam-checkpoint", help="segment-anything .pth (vit_b/vit_l/vit_h, detected from the weights)")
    p.add_argument("--device", default=None, help="device for SAM (default: cuda when available)")
    add_option(p, AUGMENT, "resolution", "--resolution")
    for name, flag in (("n_global", "--global"), ("n_region", "--region"), ("n_mix", "--mix"),
                       ("n_single", "--single"), ("n_parts", "--parts")):
        add_option(p, AUGMENT, name, flag)
    add_option(p, AUGMENT, "layout", "--layout")
    add_option(p, AUGMENT, "both_orders", "--one-order", help="do not repeat each pair in the swapped slot order")
    p.add_argument("--min-side", type=cli_int(MIN_SIDE, 2048), default=MIN_SIDE,
                   help="smallest accepted picture side in pixels")
    add_option(p, AUGMENT, "seed", "--seed")
    p.set_defaults(func=run)
    return p


def _segmenter(args: argparse.Namespace) -> Any:
    from .fallback import FallbackSegmenter
    from .segment import UserMaskSegmenter

    choice = args.segmenter
    if choice == "auto":
        choice = "sam" if args.sam_checkpoint else "fallback"
    if choice == "sam":
        if not args.sam_checkpoint:
            raise ClifError("--segmenter sam needs --sam-checkpoint PATH (a sam_vit_b/l/h .pth file).")
        from .sam import SamSegmenter

        return SamSegmenter.from_checkpoint(args.sam_checkpoint, device=args.device)
    if choice == "masks":
        return UserMaskSegmenter()
    return FallbackSegmenter()


def run(args: argparse.Namespace) -> int:
    from ..cli import tqdm_reporter
    from ..concepts.spec import load_concept_folder
    from .common_concepts import resolve_common
    from .compose import AugmentConfig
    from .dataset import build_dataset

    reporter = tqdm_reporter("augment")
    concepts = []
    for spec in args.concept:
        if len(spec) not in (3, 4):
            raise ClifError(f"--concept {' '.join(spec)}: give FOLDER TOKEN CLASS and optionally PARTS (comma-separated).")
        parts = spec[3].split(",") if len(spec) == 4 else ()
        concepts.append(load_concept_folder(spec[0], spec[1], spec[2], parts=parts, min_side=args.min_side, reporter=reporter))
    common = []
    if args.common or args.common_dir:
        generate, fingerprint = None, ""
        if args.base_model:
            from ..models.loader import load_base_model
            from .common_concepts import lazy_model_generator

            generate, fingerprint = lazy_model_generator(
                lambda: load_base_model(args.base_model), steps=args.common_steps, reporter=reporter
            )
        cache = args.common_cache or str(Path(args.out).resolve().parent / "clif_common")
        common = resolve_common(
            args.common, folder=args.common_dir, generate=generate, fingerprint=fingerprint, cache_dir=cache,
            n=args.common_images, seed=args.common_seed, min_side=args.min_side, reporter=reporter,
        )
    config = AugmentConfig(
        resolution=args.resolution, n_global=args.n_global, n_region=args.n_region, n_mix=args.n_mix,
        n_single=args.n_single, n_parts=args.n_parts, layout=args.layout, both_orders=args.both_orders,
        seed=args.seed,
    )
    build_dataset(concepts, args.out, config, _segmenter(args), common, reporter=reporter, overwrite=args.overwrite)
    return 0
