"""`clif bench efficacy` and `clif bench erase`: the sandbox benchmarks (docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="sandbox benchmarks: CLIF efficacy, erasure (scored by the oracle)")
    sub = p.add_subparsers(dest="bench_command", required=True)

    def common(parser: argparse.ArgumentParser, seeds_help: str) -> None:
        parser.add_argument("--size", choices=["smoke", "full"], default="smoke",
                            help="smoke: a CI-sized CPU run; full: the issue's sizes (hours on one CPU core)")
        parser.add_argument("--spec", type=Path, default=None, help="character spec JSON (default: the shipped one)")
        parser.add_argument("--seeds", type=int, default=0, help=seeds_help)
        parser.add_argument("--out", type=Path, default=Path("bench-results"),
                            help="folder for the table (.md), the grid (.png) and the record (.json)")
        parser.add_argument("--work", type=Path, default=None,
                            help="run folders, data sets and caches (default: OUT/work-<benchmark>-<size>); "
                                 "running again with the same settings resumes the training runs")
        parser.add_argument("--model", type=Path, default=None,
                            help="diffusers folder of the base model (default: the bundled sandbox model)")
        parser.add_argument("--vision", type=Path, default=None,
                            help="CLIP vision tower folder (default: the bundled one, or MODEL/../vision)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    eff = sub.add_parser("efficacy", help="CLIF vs textual inversion / decoder-only baselines and ablations")
    common(eff, "seeds per prompt (0: the size's: smoke 4, full 16)")
    eff.add_argument("--pairs", default="", help="confusable pairs, e.g. ada/ida,bo/bea (default: the spec's first "
                                                 "2 (smoke) or 4 (full) pairs)")
    eff.add_argument("--train-seeds", type=int, default=0,
                     help="training runs (seeds) per pair of the core comparison: decoder-only on plain pictures and "
                          "on the augmented set, CLIF full (0: the size's: smoke 1, full 3); the others train once")
    eff.set_defaults(func=_efficacy)

    er = sub.add_parser("erase", help="All-but-One vs ESD on a shape, a colour, a character and the three in one run")
    common(er, "target and other prompts per target, one seed each (0: the size's: smoke 16, full 64)")
    er.add_argument("--targets", default=None,
                    help="kind:value[->alternative], kinds shape, colour, character (an empty character: the "
                         "spec's first paired one); '+' joins targets erased in one run (default: "
                         "shape:circle->square,colour:red,character:,shape:circle->square+colour:red+character:)")
    er.add_argument("--recovery-budget", default="",
                    help="STEPSxBATCH of every recovery attack (textual inversion, CLIF training), e.g. 40x4 "
                         "(default: the size's: smoke 40x4, full 200x4)")
    er.add_argument("--recovery-targets", type=int, default=-1,
                    help="how many targets, in order, get the recovery attacks (default: the size's: smoke 1, "
                         "full all; 0: none)")
    er.set_defaults(func=_erase)
    return p


def _prepare(args: argparse.Namespace) -> str:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return "clif " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print(paths: dict[str, Path]) -> int:
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _efficacy(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter

    from .efficacy import EfficacyConfig, run_efficacy
    from .setup import parse_pairs

    command = _prepare(args)
    config = EfficacyConfig(out=args.out, size=args.size, spec=args.spec, pairs=parse_pairs(args.pairs) or None,
                            seeds=args.seeds, train_seeds=args.train_seeds, model=args.model, vision=args.vision,
                            work=args.work, seed=args.seed, command=command)
    return _print(run_efficacy(config, tqdm_reporter("efficacy benchmark")))


def _erase(args: argparse.Namespace) -> int:
    from clif_core.cli import tqdm_reporter

    from .erasure import DEFAULT_TARGETS, EraseBenchConfig, parse_budget, run_erasure_bench

    command = _prepare(args)
    steps, batch = parse_budget(args.recovery_budget)
    config = EraseBenchConfig(out=args.out, size=args.size, spec=args.spec, targets=args.targets or DEFAULT_TARGETS,
                              seeds=args.seeds,
                              model=args.model, vision=args.vision, work=args.work, seed=args.seed,
                              recovery_steps=steps, recovery_batch=batch, recovery_targets=args.recovery_targets,
                              command=command)
    return _print(run_erasure_bench(config, tqdm_reporter("erasure benchmark")))
