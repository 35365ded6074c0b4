"""`clif model …`: inspect a base model, convert a diffusers folder to one file, write a tiny test model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="base models: inspect, convert, tiny test models")
    commands = parser.add_subparsers(dest="model_command", required=True)

    info = commands.add_parser("info", help="family, fingerprint and components of a base model")
    info.add_argument("path", type=Path, help="a diffusers folder or a single-file checkpoint")
    info.set_defaults(func=_info)

    convert = commands.add_parser(
        "to-single-file", help="write a base model as one .safetensors file in the layout ComfyUI loads"
    )
    convert.add_argument("source", type=Path, help="a diffusers folder or a single-file checkpoint")
    convert.add_argument("output", type=Path, help="the .safetensors file to write")
    convert.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    convert.add_argument("--overwrite", action="store_true", help="replace the output file when it exists")
    convert.set_defaults(func=_to_single_file)

    tiny = commands.add_parser("tiny", help="write a tiny random SD-shaped model (for tests and smoke runs)")
    tiny.add_argument("family", choices=["sd1", "sd2", "sdxl"])
    tiny.add_argument("output", type=Path, help="folder to write the diffusers folder, single file and vision tower into")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny)


def _info(args: argparse.Namespace) -> int:
    from clif_core.models.loader import load_base_model

    base = load_base_model(args.path, device="cpu")
    print(f"family: {base.family}")
    print(f"fingerprint: {base.fingerprint}")
    print(f"prediction type: {base.prediction_type} ({type(base.scheduler).__name__})")
    for slot in base.text:
        print(f"text encoder {slot.name}: width {slot.width}, {slot.encoder.config.num_hidden_layers} layers")
    unet_params = sum(p.numel() for p in base.unet.parameters())
    print(f"unet: {unet_params / 1e6:.1f}M parameters, context width {base.unet.config.cross_attention_dim}")
    return 0


def _to_single_file(args: argparse.Namespace) -> int:
    import torch

    from clif_core.errors import ClifError
    from clif_core.models.ldm_layout import save_single_file
    from clif_core.models.loader import load_base_model
    from clif_core.validation import refuse_existing

    if args.output.suffix != ".safetensors":
        raise ClifError(f"{args.output}: the output must be a .safetensors file")
    refuse_existing([args.output], args.overwrite)
    base = load_base_model(args.source, device="cpu", dtype=torch.float16 if args.half else torch.float32)
    save_single_file(base, args.output)
    print(f"wrote {args.output} ({base.family}, fingerprint {base.fingerprint})")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from clif_core.models.tiny import write_tiny_model

    paths = write_tiny_model(args.family, args.output, seed=args.seed)
    print(f"diffusers folder: {paths.diffusers_dir}")
    print(f"single file: {paths.single_file}")
    print(f"vision tower: {paths.vision_dir}")
    return 0
