"""`clif sample`: images from a base model with concept files and erasure patches, each PNG carrying its recipe.

    clif sample --base models/checkpoints/sd15.safetensors --concepts alice_bob.safetensors:0.9 \\
                --prompt "<alice> and <bob> playing poker" --steps 30 --cfg 7 --seed 1 --batch 4 --out renders
    clif sample --base … --prompt "two people in a park" --region "<alice>, a woman" --region "<bob>, a man" \\
                --layout left_right --out renders
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clif_core.errors import ClifError
from clif_core.validation import check_plain_name, check_strength, refuse_existing


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `sample` command to a `clif` argparse subparsers object; `args.func(args)` runs it."""
    from clif_core.options import add_option

    from .config import LAYOUTS, REGION, SAMPLE

    p = subparsers.add_parser(
        "sample",
        help="generate images with concept files / erasure patches (PNG files carry their recipe)",
        description="Sample images from a base model with any number of concept files and erasure patches applied.",
    )
    p.add_argument("--base", required=True, help="base model: a diffusers folder or a .safetensors checkpoint")
    p.add_argument("--prompt", required=True, help="the prompt; concept placeholders such as <alice> are allowed")
    add_option(p, SAMPLE, "negative_prompt", "--negative", dest="negative")
    p.add_argument("--concepts", action="append", default=[], metavar="FILE[:STRENGTH]", type=parse_concept_arg,
                   help="a concept file or erasure patch, optionally with a LoRA strength (default 1); repeat")
    for name in ("seed", "steps", "cfg", "scheduler"):
        add_option(p, SAMPLE, name, f"--{name}")
    add_option(p, SAMPLE, "width", "--width", help="image width in pixels (default: the model's native size)")
    add_option(p, SAMPLE, "height", "--height", help="image height in pixels (default: the model's native size)")
    add_option(p, SAMPLE, "batch", "--batch")
    p.add_argument("--region", action="append", default=[], metavar="PROMPT",
                   help="a region prompt (repeat); regions are placed by --layout, --boxes or --region-mask")
    p.add_argument("--layout", choices=LAYOUTS, default="left_right", help="where the --region prompts go")
    p.add_argument("--boxes", help="explicit boxes 'x0,y0,x1,y1; …' (fractions of width/height), one per region")
    p.add_argument("--region-mask", action="append", default=[], metavar="IMAGE",
                   help="a grayscale mask image per region (white = the region); repeat")
    add_option(p, REGION, "strength", "--region-strength", dest="region_strength")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    p.add_argument("--name", default="clif", help="file name prefix: NAME-SEED.png")
    p.add_argument("--overwrite", action="store_true", help="replace existing files of the same name")
    p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best present)")
    p.set_defaults(func=run)
    return p


def parse_concept_arg(text: str) -> tuple[Path, float]:
    """"FILE" or "FILE:STRENGTH" (a drive letter such as C: is part of FILE); an argparse `type=`."""
    path, sep, strength = text.rpartition(":")
    if sep:
        try:
            value = float(strength)
        except ValueError:
            return Path(text), 1.0
        try:
            return Path(path), check_strength(value, f"the strength of {path}")
        except ClifError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return Path(text), 1.0


def _regions(args: argparse.Namespace) -> tuple:
    import numpy as np

    from clif_core.images import open_picture

    from .regional import build_regions

    if not args.region:
        if args.boxes or args.region_mask:
            raise ClifError("--boxes and --region-mask place --region prompts; give one --region per box or mask")
        return ()
    if args.boxes and args.region_mask:
        raise ClifError("give either --boxes or --region-mask, not both")
    masks = [np.asarray(open_picture(path, "--region-mask").convert("L"), dtype=np.float32) / 255.0
             for path in args.region_mask]
    layout = "boxes" if args.boxes else "masks" if masks else args.layout
    return build_regions(layout, args.region, args.boxes or "", masks, args.region_strength)


def run(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter
    from clif_core.concepts.files import load_concept_file
    from clif_core.models.loader import load_base_model

    from .config import SampleConfig
    from .recipe import save_png
    from .sampler import ConceptUse, sample

    config = SampleConfig(
        prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps, cfg=args.cfg,
        scheduler=args.scheduler, width=args.width, height=args.height, batch=args.batch, regions=_regions(args),
    )
    config.check()
    check_plain_name(args.name, "--name")
    targets = [args.out / f"{args.name}-{args.seed + i}.png" for i in range(args.batch)]
    refuse_existing(targets, args.overwrite, "pass --overwrite (or another --name or --seed)")
    reporter = tqdm_reporter("sample")
    base = load_base_model(args.base, device=args.device)
    uses = []
    for path, strength in args.concepts:
        uses.append(ConceptUse(load_concept_file(path, base=base, warn=reporter.log), strength, str(path)))
    result = sample(base, config, uses, reporter)
    for i, (image, target) in enumerate(zip(result.images, targets)):
        save_png(image, target, result.image_recipe(i))
        print(f"wrote {target}")
    return 0
