"""`clif train`: CLIF's two training stages from a dataset folder and a base model.

    clif train stage1 --dataset datasets/alice_bob --base models/sd15.safetensors \\
                      --vision models/clip_vision/clip_vit_l.safetensors --run-dir runs/alice_bob/stage1
    clif train stage2 --dataset datasets/alice_bob --base models/sd15.safetensors \\
                      --init runs/alice_bob/stage1/stage1.safetensors --run-dir runs/alice_bob/stage2 \\
                      --out alice_bob.safetensors
    clif train both   --dataset … --base … --vision … --run-dir runs/alice_bob --s1-steps 400 --s2-steps 1000 --out …

Running the same command again resumes from the run folder's latest checkpoint. The same command runs on
several processes or GPUs under `accelerate launch --multi_gpu --num_processes N -m clif_core.cli train …`
(on CPUs it uses gloo): each process takes its share of every batch.
"""

from __future__ import annotations

import argparse
from typing import Any

from clif_core.options import STAGE1, STAGE2, Options, add_option
from clif_core.validation import refuse_existing

_LOOP_FLAGS = ("grad_accum", "mixed_precision", "gradient_checkpointing", "adam_8bit", "max_grad_norm",
               "warmup_steps", "seed", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every")
"""Loop settings one flag sets for both stages of `clif train both` (steps and batch size have one per stage)."""


def _loop_args(p: argparse.ArgumentParser, stages: dict[str, Options]) -> None:
    """Loop flags; `stages` maps a flag prefix to its stage's table ({"": STAGE2}, or {"s1-": …, "s2-": …}).

    With two stages a shared flag defaults to None: each stage then keeps its own default (`_loop`)."""
    for prefix, table in stages.items():
        add_option(p, table, "loop.steps", f"--{prefix}steps", dest=f"{prefix.replace('-', '_')}steps")
        add_option(p, table, "loop.batch_size", f"--{prefix}batch-size",
                   dest=f"{prefix.replace('-', '_')}batch_size")
    table = list(stages.values())[-1]
    for name in _LOOP_FLAGS:
        flag, help = f"--{name.replace('_', '-')}", table[f"loop.{name}"].help
        if name == "adam_8bit":
            flag, help = "--no-8bit-adam", "32-bit AdamW even when bitsandbytes is installed"
        if len(stages) > 1:
            add_option(p, table, f"loop.{name}", flag, default=None, help=f"{help} (default: each stage's own)")
        else:
            add_option(p, table, f"loop.{name}", flag, help=help)
    add_option(p, table, "preview_steps", "--preview-steps")


def _stage1_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--vision", required=True,
                   help="CLIP vision tower: a models/clip_vision .safetensors file or a transformers folder")
    add_option(p, STAGE1, "lr", f"--{prefix}lr", dest=f"{prefix.replace('-', '_')}lr")
    for name in ("text_lora_rank", "text_lora_alpha", "text_lora_lr", "learnable_temperature", "holdout"):
        add_option(p, STAGE1, name, f"--{name.replace('_', '-')}")


def _stage2_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    add_option(p, STAGE2, "lr", f"--{prefix}lr", dest=f"{prefix.replace('-', '_')}lr")
    add_option(p, STAGE2, "token_lr", "--token-lr")
    add_option(p, STAGE2, "train_tokens", "--freeze-tokens", help="train the UNet LoRA only")
    for name in ("lora_rank", "lora_alpha", "lora_targets", "masked_loss", "background_weight", "min_snr_gamma",
                 "noise_offset", "prior_weight", "prior_images"):
        add_option(p, STAGE2, name, f"--{name.replace('_', '-')}")
    p.add_argument("--class-dir", help="class images as CLASS_DIR/<class word>/*.png (missing ones are generated)")
    add_option(p, STAGE2, "preview_prompt", "--preview-prompt")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train` (with stage1 / stage2 / both) to a `clif` argparse subparsers object."""
    p = subparsers.add_parser("train", help="train CLIF concepts (stage 1 contrastive, stage 2 decoder, or both)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", required=True, help="augmented dataset folder (clif augment)")
    common.add_argument("--base", required=True, help="base model: diffusers folder or single-file checkpoint")
    common.add_argument("--run-dir", required=True, help="run folder (checkpoints, curve, outputs); reused to resume")
    common.add_argument("--out", help="also write the resulting concept file here")
    common.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    common.add_argument("--restart", action="store_true", help="discard the run folder's earlier progress")
    common.add_argument("--device", help="cuda, cuda:N or cpu (default: what the launcher assigns)")
    add_option(common, STAGE2, "vectors", "--vectors", help="token vectors per concept")

    s1 = sub.add_parser("stage1", parents=[common], help="contrastive stage: concept token rows (+ text LoRA)")
    _loop_args(s1, {"": STAGE1})
    _stage1_args(s1)
    s2 = sub.add_parser("stage2", parents=[common], help="decoder stage: UNet LoRA + token rows → concept file")
    s2.add_argument("--init", help="stage-1 concept file to start from (default: class words)")
    _loop_args(s2, {"": STAGE2})
    _stage2_args(s2)
    both = sub.add_parser("both", parents=[common], help="stage 1 then stage 2 (options of one stage: --s1-/--s2-)")
    _loop_args(both, {"s1-": STAGE1, "s2-": STAGE2})
    _stage1_args(both, prefix="s1-")
    _stage2_args(both, prefix="s2-")
    p.set_defaults(func=run)
    return p


def _loop(args: argparse.Namespace, default: Any, steps: int, batch: int):
    """The stage's default loop with what the command line set (a shared flag left at None keeps the stage's)."""
    from dataclasses import replace

    given = {name: getattr(args, name) for name in _LOOP_FLAGS if getattr(args, name) is not None}
    return replace(default, steps=steps, batch_size=batch, **given)


def _stage1_config(args: argparse.Namespace, lr: float, loop: Any):
    from .contrastive import ContrastiveConfig

    return ContrastiveConfig(
        vectors=args.vectors, lr=lr, text_lora_rank=args.text_lora_rank, text_lora_alpha=args.text_lora_alpha,
        text_lora_lr=args.text_lora_lr, learnable_temperature=args.learnable_temperature, holdout=args.holdout,
        preview_steps=args.preview_steps, loop=loop,
    )


def _stage2_config(args: argparse.Namespace, lr: float, loop: Any):
    from .decoder import DecoderConfig

    return DecoderConfig(
        vectors=args.vectors, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()), lr=lr,
        train_tokens=args.train_tokens, token_lr=args.token_lr, masked_loss=args.masked_loss,
        background_weight=args.background_weight, min_snr_gamma=args.min_snr_gamma, noise_offset=args.noise_offset,
        prior_weight=args.prior_weight, prior_images=args.prior_images, preview_steps=args.preview_steps,
        preview_prompt=args.preview_prompt, loop=loop,
    )


def stage_configs(args: argparse.Namespace) -> list:
    """The stage configs a parsed `clif train` command line asks for (one, or stage 1 and stage 2)."""
    from .contrastive import ContrastiveConfig
    from .decoder import DecoderConfig

    s1, s2 = ContrastiveConfig().loop, DecoderConfig().loop
    if args.stage == "both":
        return [_stage1_config(args, args.s1_lr, _loop(args, s1, args.s1_steps, args.s1_batch_size)),
                _stage2_config(args, args.s2_lr, _loop(args, s2, args.s2_steps, args.s2_batch_size))]
    if args.stage == "stage1":
        return [_stage1_config(args, args.lr, _loop(args, s1, args.steps, args.batch_size))]
    return [_stage2_config(args, args.lr, _loop(args, s2, args.steps, args.batch_size))]


def _precision_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def run(args: argparse.Namespace) -> int:
    import torch

    from clif_core.training.precision import make_accelerator

    from ..cli import tqdm_reporter
    from ..concepts.files import load_concept_file, save_concept_file
    from ..models.loader import load_base_model
    from ..progress import Reporter
    from .data import open_dataset

    configs = stage_configs(args)
    for config in configs:
        config.check()
    if args.out:
        refuse_existing([args.out], args.overwrite)
    open_dataset(args.dataset)  # a broken or hostile dataset is refused before the model loads
    accelerator = make_accelerator(configs[0].loop, torch.device(args.device) if args.device else None)
    cli_reporter = tqdm_reporter(f"clif train {args.stage}")  # also turns Ctrl-C into a clean stop
    reporter = cli_reporter if accelerator.is_main_process else Reporter(should_stop=cli_reporter.should_stop,
                                                                          log=lambda m: None)
    base = load_base_model(args.base, device=accelerator.device,
                           dtype=_precision_dtype(accelerator.mixed_precision))
    if args.stage == "stage1":
        from .contrastive import train_contrastive

        result = train_contrastive(base, args.dataset, args.vision, args.run_dir, configs[0], reporter, accelerator,
                                   args.restart)
    elif args.stage == "stage2":
        from .decoder import train_decoder

        init = load_concept_file(args.init, base=base, warn=reporter.log) if args.init else None
        result = train_decoder(base, args.dataset, args.run_dir, configs[0], init, reporter, accelerator,
                               args.restart, class_dir=args.class_dir)
    else:
        from .both_stages import train_concepts

        result = train_concepts(base, args.dataset, args.vision, args.run_dir, configs[0], configs[1], reporter,
                                accelerator, args.restart, class_dir=args.class_dir)
    if accelerator.is_main_process:
        if args.out:
            save_concept_file(result.file, args.out)
            reporter.log(f"wrote {args.out}")
        print(result.report())
    accelerator.wait_for_everyone()
    return 0
