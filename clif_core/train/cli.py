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

from clif_core.validation import cli_float, cli_int, refuse_existing

LR = cli_float(0, 1)
RANK = cli_int(0, 256)
ALPHA = cli_float(0, 1024)


def _loop_args(p: argparse.ArgumentParser, steps: int, batch: int, prefixes: tuple[str, ...] = ("",)) -> None:
    for prefix in prefixes:
        p.add_argument(f"--{prefix}steps", type=cli_int(1, 1_000_000), default=steps, help="optimizer steps")
        p.add_argument(f"--{prefix}batch-size", type=cli_int(1, 4096), default=batch,
                       help="samples per process and micro-step")
    p.add_argument("--grad-accum", type=cli_int(1, 1024), default=1, help="micro-steps per optimizer step")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto: bf16 on CUDA (fp16 where bf16 is unsupported), no on CPU")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    p.add_argument("--no-8bit-adam", action="store_true", help="32-bit AdamW even when bitsandbytes is installed")
    p.add_argument("--max-grad-norm", type=cli_float(0, 1e6), default=1.0, help="gradient clipping (0: off)")
    p.add_argument("--warmup-steps", type=cli_int(0, 1_000_000), default=0)
    p.add_argument("--seed", type=cli_int(0, 2**63 - 1), default=0)
    p.add_argument("--checkpoint-every", type=cli_int(1, 1_000_000), default=100)
    p.add_argument("--keep-checkpoints", type=cli_int(1, 1000), default=2)
    p.add_argument("--preview-every", type=cli_int(0, 1_000_000), default=0,
                   help="every N steps a leakage preview into RUN/previews: each concept alone and all together "
                   "from one seed, drawn with the model as trained so far (0: never)")
    p.add_argument("--preview-steps", type=cli_int(0, 1000), default=20,
                   help="sampling steps of the previews and of stage 2's thumbnail (0: none)")
    p.add_argument("--log-every", type=cli_int(0, 1_000_000), default=25)


def _stage1_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--vision", required=True,
                   help="CLIP vision tower: a models/clip_vision .safetensors file or a transformers folder")
    p.add_argument(f"--{prefix}lr", type=LR, default=1e-4, help="learning rate of the token rows")
    p.add_argument("--text-lora-rank", type=RANK, default=0, help="text-encoder LoRA rank (0: token rows only)")
    p.add_argument("--text-lora-alpha", type=ALPHA, default=0.0, help="0: the rank")
    p.add_argument("--text-lora-lr", type=LR, default=1e-4)
    p.add_argument("--learnable-temperature", action="store_true")
    p.add_argument("--holdout", type=cli_float(0, 0.99), default=0.1, help="fraction held out for the retrieval metric")


def _stage2_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}lr", type=LR, default=2e-4, help="learning rate of the UNet LoRA")
    p.add_argument("--token-lr", type=LR, default=5e-5, help="learning rate of the token rows")
    p.add_argument("--freeze-tokens", action="store_true", help="train the UNet LoRA only")
    p.add_argument("--lora-rank", type=cli_int(1, 256), default=16)
    p.add_argument("--lora-alpha", type=ALPHA, default=0.0, help="0: the rank")
    p.add_argument("--lora-targets", default="to_q,to_k,to_v,to_out.0", help="comma-separated UNet module names")
    p.add_argument("--masked-loss", action="store_true", help="weight the loss by the slot masks")
    p.add_argument("--background-weight", type=cli_float(0, 1), default=0.1, help="loss weight outside the masks")
    p.add_argument("--min-snr-gamma", type=cli_float(0, 100), default=0.0,
                   help="min-SNR weighting (0: off, 5 is common)")
    p.add_argument("--noise-offset", type=cli_float(0, 1), default=0.0)
    p.add_argument("--prior-weight", type=cli_float(0, 10), default=0.0, help="prior preservation weight (0: off)")
    p.add_argument("--prior-images", type=cli_int(1, 1000), default=8, help="class images per class word")
    p.add_argument("--class-dir", help="class images as CLASS_DIR/<class word>/*.png (missing ones are generated)")
    p.add_argument("--preview-prompt", default="", help="default: the dataset's first Mix caption")


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
    common.add_argument("--vectors", type=cli_int(1, 16), default=2, help="token vectors per concept")

    s1 = sub.add_parser("stage1", parents=[common], help="contrastive stage: concept token rows (+ text LoRA)")
    _loop_args(s1, steps=400, batch=32)
    _stage1_args(s1)
    s2 = sub.add_parser("stage2", parents=[common], help="decoder stage: UNet LoRA + token rows → concept file")
    s2.add_argument("--init", help="stage-1 concept file to start from (default: class words)")
    _loop_args(s2, steps=1000, batch=1)
    _stage2_args(s2)
    both = sub.add_parser("both", parents=[common], help="stage 1 then stage 2 (options of one stage: --s1-/--s2-)")
    _loop_args(both, steps=0, batch=0, prefixes=("s1-", "s2-"))
    both.set_defaults(s1_steps=400, s1_batch_size=32, s2_steps=1000, s2_batch_size=1)
    _stage1_args(both, prefix="s1-")
    _stage2_args(both, prefix="s2-")
    p.set_defaults(func=run)
    return p


def _loop(args: argparse.Namespace, steps: int, batch: int):
    from clif_core.training.loop import LoopConfig

    return LoopConfig(
        steps=steps, batch_size=batch, grad_accum=args.grad_accum, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, adam_8bit=not args.no_8bit_adam,
        max_grad_norm=args.max_grad_norm, warmup_steps=args.warmup_steps, seed=args.seed,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        preview_every=args.preview_every, log_every=args.log_every,
    )


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
        train_tokens=not args.freeze_tokens, token_lr=args.token_lr, masked_loss=args.masked_loss,
        background_weight=args.background_weight, min_snr_gamma=args.min_snr_gamma, noise_offset=args.noise_offset,
        prior_weight=args.prior_weight, prior_images=args.prior_images, preview_steps=args.preview_steps,
        preview_prompt=args.preview_prompt, loop=loop,
    )


def _precision_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..cli import tqdm_reporter
    from ..concepts.file_format import load_concept_file, save_concept_file
    from ..models.loader import load_base_model
    from ..progress import Reporter
    from .data import open_dataset
    from clif_core.training.precision import make_accelerator

    if args.stage == "both":
        s1 = _stage1_config(args, args.s1_lr, _loop(args, args.s1_steps, args.s1_batch_size))
        s2 = _stage2_config(args, args.s2_lr, _loop(args, args.s2_steps, args.s2_batch_size))
        configs = [s1, s2]
    elif args.stage == "stage1":
        configs = [_stage1_config(args, args.lr, _loop(args, args.steps, args.batch_size))]
    else:
        configs = [_stage2_config(args, args.lr, _loop(args, args.steps, args.batch_size))]
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
            save_concept_file(result.concepts, args.out)
            reporter.log(f"wrote {args.out}")
        print(result.report())
    accelerator.wait_for_everyone()
    return 0
