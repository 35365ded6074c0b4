"""`clif concepts …`: inspect concept files, export them to ComfyUI's stock files, import such files back."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("concepts", help="concept files: inspect, export to ComfyUI files, import")
    commands = parser.add_subparsers(dest="concepts_command", required=True)

    inspect = commands.add_parser("inspect", help="what a concept file holds and what it was made for")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--base", type=Path, help="check the file against this base model")
    inspect.set_defaults(func=_inspect)

    export = commands.add_parser(
        "export", help="one embedding per concept (models/embeddings) and the LoRA (models/loras)"
    )
    export.add_argument("path", type=Path, help="the concept file")
    export.add_argument("comfy_models", type=Path, help="ComfyUI's models folder (embeddings/ and loras/ inside)")
    export.add_argument("--name", help="LoRA file name (default: the concept file's name)")
    export.add_argument("--overwrite", action="store_true")
    export.set_defaults(func=_export)

    imp = commands.add_parser("import", help="a concept file from an exported LoRA and embeddings")
    imp.add_argument("output", type=Path, help="the concept file to write (.safetensors)")
    imp.add_argument("--lora", type=Path, help="the LoRA file (kohya layout)")
    imp.add_argument("--embedding", type=Path, action="append", default=[], help="an embedding file (repeat)")
    imp.add_argument("--family", choices=["sd1", "sd2", "sdxl"], help="when the files do not say")
    imp.add_argument("--overwrite", action="store_true", help="replace the output file when it exists")
    imp.set_defaults(func=_import)


def _inspect(args: argparse.Namespace) -> int:
    from clif_core.concepts.files import load_concept_file

    base = None
    if args.base is not None:
        from clif_core.models.loader import load_base_model

        base = load_base_model(args.base, device="cpu")
    concepts = load_concept_file(args.path, base=base, warn=lambda m: print(f"warning: {m}"))
    print(concepts.summary())
    if concepts.recipe:
        print(f"recipe: {concepts.recipe}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from clif_core.concepts.exports import export_comfy
    from clif_core.concepts.files import load_concept_file

    concepts = load_concept_file(args.path)
    written = export_comfy(concepts, args.comfy_models / "embeddings", args.comfy_models / "loras",
                           args.name or args.path.stem, overwrite=args.overwrite)
    for path in written:
        print(f"wrote {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from clif_core.concepts.exports import import_comfy
    from clif_core.concepts.files import save_concept_file
    from clif_core.validation import refuse_existing

    refuse_existing([args.output], args.overwrite)
    concepts = import_comfy(args.lora, args.embedding, family=args.family)
    save_concept_file(concepts, args.output)
    print(f"wrote {args.output}")
    print(concepts.summary())
    return 0
