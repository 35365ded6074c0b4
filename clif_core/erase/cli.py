"""`clif erase …`: erase concepts into a patch, purify images, merge a patch into a checkpoint, export it.

    clif erase --base MODEL --target "pig -> cow" --target "van gogh" --out erase.safetensors
    clif erase purify --base MODEL --patch erase.safetensors --image in.png --out out.png
    clif erase merge --base MODEL --patch erase.safetensors --out merged.safetensors
    clif erase export --patch erase.safetensors --loras-dir ComfyUI/models/loras
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clif_core.validation import MAX_GUIDANCE, MAX_STRENGTH, cli_float, cli_int

from .config import METHODS, SUBSETS


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
    parser.add_argument("--method", choices=METHODS, default="all-but-one")
    parser.add_argument("--params", choices=SUBSETS, default="auto")
    parser.add_argument("--steps", type=cli_int(1, 100_000), default=400)
    parser.add_argument("--batch-size", type=cli_int(1, 64), default=2)
    parser.add_argument("--lr", type=cli_float(0, 1), default=0.0, help="0: 1e-4 for lora, 1e-5 for weight subsets")
    parser.add_argument("--eta", type=cli_float(0, 10), default=1.0)
    parser.add_argument("--lam", type=cli_float(0, 100), default=1.0)
    parser.add_argument("--negative-eta", type=cli_float(0, 10), default=0.0)
    parser.add_argument("--preserve-weight", type=cli_float(0, 100), default=1.0)
    parser.add_argument("--lora-rank", type=cli_int(1, 256), default=8)
    parser.add_argument("--trajectories", type=cli_int(1, 64), default=4)
    parser.add_argument("--sample-steps", type=cli_int(2, 1000), default=50)
    parser.add_argument("--guidance-scale", type=cli_float(0, MAX_GUIDANCE), default=3.0)
    parser.add_argument("--resolution", type=cli_int(0, 4096), default=0)
    parser.add_argument("--patch-tolerance", type=cli_float(0, 0.999), default=0.01)
    parser.add_argument("--patch-max-rank", type=cli_int(0, 4096), default=0)
    parser.add_argument("--seed", type=cli_int(0, 2**63 - 1), default=0)
    parser.add_argument("--precision", choices=["auto", "no", "fp16", "bf16"], default="auto")
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
    from clif_core.training.loop import LoopConfig

    from .config import EraseConfig, parse_targets
    from .trainer import erase_concepts

    if args.base is None or args.out is None or not args.target:
        raise ClifError("clif erase needs --base, --out and at least one --target ('pig' or 'pig -> cow')")
    loop = LoopConfig(steps=args.steps, batch_size=args.batch_size, mixed_precision=args.precision, seed=args.seed,
                      checkpoint_every=100, preview_every=0, log_every=25)
    config = EraseConfig(
        targets=parse_targets(args.target), preserve=list(args.preserve), method=args.method, params=args.params,
        eta=args.eta, lam=args.lam, negative_eta=args.negative_eta, preserve_weight=args.preserve_weight,
        lr=args.lr, lora_rank=args.lora_rank, trajectories=args.trajectories, sample_steps=args.sample_steps,
        guidance_scale=args.guidance_scale, resolution=args.resolution, patch_tolerance=args.patch_tolerance,
        patch_max_rank=args.patch_max_rank, loop=loop,
    )
    config.check()
    base = load_base_model(args.base, device=args.device)
    run_dir = args.run_dir or args.out.with_name(args.out.stem + "_run")
    result = erase_concepts(base, config, run_dir, args.out, reporter=tqdm_reporter("erase"),
                            restart=args.restart, overwrite=args.overwrite)
    print(result.report())
    return 0


def _purify(args: argparse.Namespace) -> int:
    from PIL import Image

    from clif_core.cli import tqdm_reporter
    from clif_core.fileio import atomic_path
    from clif_core.images import check_min_side, open_picture
    from clif_core.validation import refuse_existing
    from clif_core.models.loader import load_base_model

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
