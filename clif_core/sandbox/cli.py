"""`clif sandbox ...`: render the world, list/render characters, train and evaluate the oracle, pretrain.

    clif sandbox render --out renders/ --n 64 --grid
    clif sandbox characters --out concepts/ --n 5
    clif sandbox oracle-train --out clif_core/sandbox/weights/oracle/oracle.safetensors
    clif sandbox oracle-eval [--model clif_core/sandbox/weights/base/diffusers]
    clif sandbox pretrain --preset cpu --work .sandbox-cpu --max-minutes 170 --export out/sandbox
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from clif_core.errors import ClifError


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sandbox", help="the procedural sandbox world, its oracle and its base model")
    sub = p.add_subparsers(dest="sandbox_command", required=True)

    r = sub.add_parser("render", help="render world scenes (PNG + captions.jsonl with masks)")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--n", type=int, default=16)
    r.add_argument("--seed", type=int, default=0, help="first scene seed (scenes use seed, seed+1, ...)")
    r.add_argument("--grid", action="store_true", help="also write grid.png of all renders")
    r.set_defaults(func=_render)

    c = sub.add_parser("characters", help="list the benchmark characters; with --out, render concept folders")
    c.add_argument("--spec", type=Path, default=None, help="character spec JSON (default: the shipped one)")
    c.add_argument("--out", type=Path, default=None, help="write one concept folder per character here")
    c.add_argument("--names", default=None, help="comma-separated characters to render (default: all)")
    c.add_argument("--n", type=int, default=5, help="pictures per character")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_characters)

    ot = sub.add_parser("oracle-train", help="train the oracle on renders and report held-out accuracy per head")
    ot.add_argument("--out", type=Path, default=None, help="weights file (default: the pack's committed oracle)")
    ot.add_argument("--n-train", type=int, default=None)
    ot.add_argument("--epochs", type=int, default=None)
    ot.add_argument("--batch-size", type=int, default=None)
    ot.add_argument("--seed", type=int, default=None)
    ot.add_argument("--workers", type=int, default=None, help="rendering processes")
    ot.add_argument("--max-minutes", type=float, default=None)
    ot.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ot.add_argument("--report", type=Path, default=None, help="write the JSON report here too")
    ot.set_defaults(func=_oracle_train)

    oe = sub.add_parser("oracle-eval", help="oracle accuracy on fresh renders; with --model, a model's prompt following")
    oe.add_argument("--weights", type=Path, default=None, help="oracle weights (default: the committed ones)")
    oe.add_argument("--n", type=int, default=2000, help="fresh renders to score the oracle on (0: skip)")
    oe.add_argument("--seed", type=int, default=0)
    oe.add_argument("--model", type=Path, default=None, help="a sandbox base model (diffusers folder) to score")
    oe.add_argument("--prompts-per-set", type=int, default=100, help="prompts per set (one object, two, figures)")
    oe.add_argument("--characters", type=int, default=0,
                    help="with --model: also draw each shipped character from its caption this many times")
    oe.add_argument("--steps", type=int, default=30)
    oe.add_argument("--guidance", type=float, default=5.0)
    oe.add_argument("--grid", type=Path, default=None, help="with --model: write a PNG grid of the first images")
    oe.add_argument("--threads", type=int, default=None)
    oe.add_argument("--report", type=Path, default=None)
    oe.add_argument("--curve", type=Path, default=None,
                    help="with --model: add this result as a point of a learning curve (JSON; a PNG is drawn beside it)")
    oe.set_defaults(func=_oracle_eval)

    pt = sub.add_parser("pretrain", help="pretrain the sandbox base model (resumes from --work)")
    pt.add_argument("--work", type=Path, required=True, help="checkpoint folder; run again with the same options to resume")
    pt.add_argument("--preset", choices=["cpu", "gpu", "cpu-smoke", "test"], default="cpu")
    pt.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    pt.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when present)")
    pt.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores, at most 16)")
    pt.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    pt.add_argument("--export", type=Path, default=None, help="when finished, write diffusers/ and vision/ here")
    pt.add_argument("--snapshot", type=Path, default=None,
                    help="train nothing: write the UNet stage's current EMA weights as a model here (a learning-curve point)")
    pt.set_defaults(func=_pretrain)
    return p


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _render(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from clif_core.fileio import atomic_path, write_text_atomic
    from clif_core.sandbox.prompt_following import image_grid
    from clif_core.sandbox.world import render

    if args.n < 1:
        raise ClifError(f"--n must be at least 1, not {args.n}")
    out = args.out
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lines, images = [], []
    for seed in range(args.seed, args.seed + args.n):
        r = render(seed)
        name = f"{seed:08d}.png"
        with atomic_path(out / name) as tmp:
            r.pil().save(tmp, format="PNG")
        masks = []
        for obj, mask in zip(r.scene.objects, r.masks):
            mask_name = f"masks/{seed:08d}.{obj.placement.slot}.png"
            with atomic_path(out / mask_name) as tmp:
                Image.fromarray(mask.astype(np.uint8) * 255, "L").save(tmp, format="PNG")
            masks.append({"slot": obj.placement.slot, "kind": obj.thing.kind, "mask": mask_name})
        lines.append(json.dumps({"file_name": name, "seed": seed, "caption": r.caption, "objects": masks}))
        images.append(r.image)
    write_text_atomic(out / "captions.jsonl", "\n".join(lines) + "\n")
    if args.grid:
        with atomic_path(out / "grid.png") as tmp:
            image_grid(np.stack(images)).save(tmp, format="PNG")
    print(f"wrote {args.n} renders to {out}")
    return 0


def _characters(args: argparse.Namespace) -> int:
    from clif_core.sandbox.characters import load_characters, write_character_folder

    spec = load_characters(args.spec)
    for name, c in spec.characters.items():
        detail = f"{c.figure.detail.colour} {c.figure.detail.kind}" if c.figure.detail else "none"
        print(f"{name:>8}  {c.description}  (detail: {detail})")
    print("pairs: " + ", ".join(f"{a}/{b}" for a, b in spec.pairs))
    if args.out is not None:
        names = [n.strip() for n in args.names.split(",")] if args.names else list(spec.characters)
        for name in names:
            folder = write_character_folder(spec[name], args.out / name, n=args.n, seed=args.seed)
            print(f"wrote {args.n} pictures of {name} to {folder}")
    return 0


def _oracle_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from clif_core.cli import tqdm_reporter
    from clif_core.fileio import write_text_atomic
    from clif_core.sandbox.oracle import DEFAULT_WEIGHTS
    from clif_core.sandbox.oracle_train import OracleTrainConfig, train_oracle

    _threads(args)
    changes = {k: getattr(args, k) for k in ("n_train", "epochs", "batch_size", "seed", "workers", "max_minutes")}
    cfg = replace(OracleTrainConfig(), **{k: v for k, v in changes.items() if v is not None})
    out = args.out or DEFAULT_WEIGHTS
    started = time.time()
    oracle, report = train_oracle(cfg, tqdm_reporter("oracle"))
    report["wall_seconds"] = round(time.time() - started, 1)
    oracle.save(out, {"report": json.dumps(report)})
    text = json.dumps(report, indent=1)
    if args.report:
        write_text_atomic(args.report, text + "\n")
    print(text)
    print(f"oracle weights: {out}")
    return 0


def _oracle_eval(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter
    from clif_core.fileio import atomic_path, write_text_atomic
    from clif_core.sandbox.oracle import Oracle
    from clif_core.sandbox.oracle_train import EVAL_SEED_BASE, evaluate

    _threads(args)
    oracle = Oracle.load(args.weights)
    start = EVAL_SEED_BASE + 50_000_000 + args.seed * 1_000_000  # not the range the training report used
    report: dict[str, Any] = {}
    if args.n > 0:
        report["oracle"] = {"renders": evaluate(oracle, start, args.n), "augmented": evaluate(oracle, start, args.n, augmented=True)}
    if args.model is not None:
        from clif_core.models.loader import load_base_model
        from clif_core.sandbox.prompt_following import image_grid, prompt_following

        base = load_base_model(args.model, device="cpu")
        result, images = prompt_following(
            base, oracle, n_per_set=args.prompts_per_set, seed=args.seed, steps=args.steps, guidance=args.guidance,
            reporter=tqdm_reporter("sampling"),
        )
        report["prompt_following"] = result
        if args.characters > 0:
            from clif_core.sandbox.prompt_following import character_following

            report["characters"], _ = character_following(
                base, oracle, n_per_character=args.characters, seed=args.seed, steps=args.steps,
                guidance=args.guidance, reporter=tqdm_reporter("characters"),
            )
        if args.grid is not None:
            import numpy as np

            first = np.concatenate([im[:16] for im in images.values()])
            with atomic_path(args.grid) as tmp:
                image_grid(first).save(tmp, format="PNG")
    if args.curve is not None and args.model is not None:
        from clif_core.sandbox.learning_curve import add_point

        add_point(args.curve, args.model, report)
    text = json.dumps(report, indent=1)
    if args.report:
        write_text_atomic(args.report, text + "\n")
    print(text)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter
    from clif_core.sandbox.pretrain import export_model, pretrain
    from clif_core.sandbox.pretrain_config import PRESETS

    _threads(args)
    if args.snapshot is not None:
        paths = export_model(args.work, args.snapshot, unfinished=True)
        print(f"diffusers folder: {paths.diffusers_dir}\nvision tower: {paths.vision_dir}")
        return 0
    state = pretrain(
        PRESETS[args.preset], args.work, device=args.device, max_minutes=args.max_minutes, render_workers=args.workers,
        reporter=tqdm_reporter("pretrain"),
    )
    if not state.done:
        print(f"stopped at stage {state.stage} step {state.step}; run the same command to resume")
        return 0
    print(f"pretraining finished; seconds per stage: {json.dumps(state.seconds)}")
    if args.export is not None:
        paths = export_model(args.work, args.export)
        print(f"diffusers folder: {paths.diffusers_dir}\nvision tower: {paths.vision_dir}")
    return 0
