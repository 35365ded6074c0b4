"""`clif erase …`: erase concepts into a patch, purify images, merge a patch into a checkpoint, export it.

    clif erase --base MODEL --target "pig -> cow" --target "van gogh" --out erase.safetensors
    clif erase purify --base MODEL --patch erase.safetensors --image in.png --out out.png
    clif erase merge --base MODEL --patch erase.safetensors --out merged.safetensors
    clif erase export --patch erase.safetensors --loras-dir ComfyUI/models/loras
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clif_core.options import ERASE, add_option
from clif_core.validation import MAX_GUIDANCE, MAX_STRENGTH, cli_float, cli_int


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("erase", allow_abbrev=False,  # "--patch" of the subcommands is no abbreviation
                            help="erase concepts (All-but-One or ESD) into an erasure patch; purify, merge")
    parser.add_argument("--base", type=Path, help="base model: diffusers folder or single-file checkpoint")
    parser.add_argument("--target", action="append", default=[],
                        help="a concept to erase, or 'target -> alternative' (repeat for several)")
    parser.add_argument("--preserve", action="append", default=[], help="a prompt whose output must stay (repeat)")
    parser.add_argument("--out", type=Path, help="the erasure patch to write (.safetensors)")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: next to --out, '<name>_run')")
    parser.add_argument("--restart", action="store_true", help="start over instead of resuming the run folder")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even when another run made it")
    for name in ("method", "params", "loop.steps", "loop.batch_size", "lr", "eta", "lam", "negative_eta",
                 "preserve_weight", "lora_rank", "trajectories", "sample_steps", "guidance_scale", "resolution",
                 "patch_tolerance", "patch_max_rank", "loop.seed", "loop.preview_every"):
        add_option(parser, ERASE, name, "--" + name.rsplit(".", 1)[-1].replace("_", "-"))
    add_option(parser, ERASE, "loop.mixed_precision", "--precision", dest="precision")
    parser.add_argument("--device", help="cuda, cpu, mps (default: the best present)")
    parser.set_defaults(func=_erase)
    commands = parser.add_subparsers(dest="erase_command", required=False)

    purify = commands.add_parser("purify", help="remove the erased concepts from an image, keeping its layout")
    purify.add_argument("--base", type=Path, required=True)
    purify.add_argument("--patch", type=Path, required=True)
    purify.add_argument("--image", type=Path, required=True)
    purify.add_argument("--out", type=Path, required=True)
    purify.add_argument("--prompt", help="the condition for inversion and regeneration (default: the targets)")
    purify.add_argument("--steps", type=cli_int(1, 1000), default=50)
    purify.add_argument("--strength", type=cli_float(0.001, 1), default=1.0, help="how far to invert (1: to noise)")
    purify.add_argument("--guidance-scale", type=cli_float(0, MAX_GUIDANCE), default=1.0)
    purify.add_argument("--allow-other-base", action="store_true")
    purify.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    purify.add_argument("--device")
    purify.set_defaults(func=_purify)

    merge = commands.add_parser("merge", help="write base + patch as one single-file checkpoint")
    merge.add_argument("--base", type=Path, required=True)
    merge.add_argument("--patch", type=Path, required=True)
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--strength", type=cli_float(-MAX_STRENGTH, MAX_STRENGTH), default=1.0)
    merge.add_argument("--allow-other-base", action="store_true")
    merge.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    merge.set_defaults(func=_merge)

    export = commands.add_parser("export", help="the patch as a plain LoRA for ComfyUI's stock LoraLoader")
    export.add_argument("--patch", type=Path, required=True)
    export.add_argument("--loras-dir", type=Path, required=True)
    export.add_argument("--name", help="file name without .safetensors (default: the patch's)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=_export)


def _erase(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter
    from clif_core.errors import ClifError
    from clif_core.models.loader import load_base_model

    from .trainer import erase_concepts

    if args.base is None or args.out is None or not args.target:
        raise ClifError("clif erase needs --base, --out and at least one --target ('pig' or 'pig -> cow')")
    config = erase_config(args)
    config.check()
    base = load_base_model(args.base, device=args.device)
    run_dir = args.run_dir or args.out.with_name(args.out.stem + "_run")
    result = erase_concepts(base, config, run_dir, args.out, reporter=tqdm_reporter("erase"),
                            restart=args.restart, overwrite=args.overwrite)
    print(result.report())
    return 0


def erase_config(args: argparse.Namespace):
    """The EraseConfig a parsed `clif erase` command line asks for (the loop settings it has no flag for keep
    EraseConfig's defaults)."""
    from dataclasses import replace

    from .config import EraseConfig, parse_targets

    loop = replace(EraseConfig(targets=[]).loop, steps=args.steps, batch_size=args.batch_size,
                   mixed_precision=args.precision, seed=args.seed, preview_every=args.preview_every)
    return EraseConfig(
        targets=parse_targets(args.target), preserve=list(args.preserve), method=args.method, params=args.params,
        eta=args.eta, lam=args.lam, negative_eta=args.negative_eta, preserve_weight=args.preserve_weight,
        lr=args.lr, lora_rank=args.lora_rank, trajectories=args.trajectories, sample_steps=args.sample_steps,
        guidance_scale=args.guidance_scale, resolution=args.resolution, patch_tolerance=args.patch_tolerance,
        patch_max_rank=args.patch_max_rank, loop=loop,
    )


def _purify(args: argparse.Namespace) -> int:
    from PIL import Image

    from clif_core.cli import tqdm_reporter
    from clif_core.fileio import atomic_path
    from clif_core.images import check_min_side, open_picture
    from clif_core.models.loader import load_base_model
    from clif_core.validation import refuse_existing

    from .patch import load_erasure_patch
    from .purify import purify

    refuse_existing([args.out], args.overwrite)
    image = open_picture(args.image, "--image")
    check_min_side(image.size, f"--image {args.image}")  # before the model loads; purify() applies the same rule
    base = load_base_model(args.base, device=args.device)
    patch = load_erasure_patch(args.patch, base, allow_other_base=args.allow_other_base, warn=print)
    result = purify(base, patch, image, prompt=args.prompt, steps=args.steps,
                    strength=args.strength, guidance_scale=args.guidance_scale,
                    allow_other_base=args.allow_other_base, reporter=tqdm_reporter("purify"))
    with atomic_path(args.out) as tmp:
        result.save(tmp, format=Image.registered_extensions().get(args.out.suffix.lower(), "PNG"))
    print(f"wrote {args.out} ({result.size[0]}x{result.size[1]})")
    return 0


def _merge(args: argparse.Namespace) -> int:
    import torch

    from clif_core.models.loader import load_base_model
    from clif_core.validation import refuse_existing

    from .patch import load_erasure_patch, merge_into_checkpoint

    refuse_existing([args.out], args.overwrite)
    base = load_base_model(args.base, device="cpu", dtype=torch.float32)
    patch = load_erasure_patch(args.patch)
    merge_into_checkpoint(base, patch, args.out, args.strength, args.allow_other_base, warn=print)
    print(f"wrote {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .patch import export_for_loraloader, load_erasure_patch

    patch = load_erasure_patch(args.patch)
    path = export_for_loraloader(patch, args.loras_dir, args.name or args.patch.stem, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0
