"""Stage-1 (contrastive) training step: this pack's (train_contrastive through the shared loop) against a
plain InfoNCE step over the same text encoder and CLIP vision tower, on the CPU.

    .venv/bin/python benchmarks/stage1_step.py                       # the sandbox model and its tower, 2 threads
    .venv/bin/python benchmarks/stage1_step.py --steps 3 --warmup 1  # a smoke run

Both steps train the concept tokens (2 vectors per concept) and a linear head from the text encoder's pooled
output to the image embedding space (identity at the start; SD1 encoders have no CLIP text projection) with
AdamW on the symmetric InfoNCE loss at CLIP's scale 100. The plain step is how such a script is usually
written with transformers: the vision tower embeds the batch's pictures every step, the whole embedding table
is trainable and the other rows are put back after each step, the labels are the diagonal. The pack's step
embeds every picture once, trains only the new token rows and packs hard negatives into each batch.

Each side runs in a process of its own (so each side's peak RSS is its own) with `--threads` CPU threads.
Printed per batch size: steps/s, images/s and peak RSS of each, and the pack/plain ratios; `--json FILE`
writes them (bench_common's format). Timing starts after `--warmup` steps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_common import (  # noqa: E402
    DEFAULT_THREADS,
    add_side_arguments,
    peak_rss_mib,
    result,
    run_side,
    sandbox_folder,
    set_cpu_threads,
    write_json,
)
from train_step import CONCEPTS, Clock, compare, make_dataset, native_resolution  # noqa: E402

SCALE = 100.0  # CLIP's logit scale at its clamp; the sandbox tower carries none of its own


def pack_step(folder: Path, vision: Path, dataset: Path, batch: int, steps: int, warmup: int) -> float:
    from clif_core.models.loader import load_base_model
    from clif_core.progress import Reporter
    from clif_core.train.contrastive import ContrastiveConfig, train_contrastive
    from clif_core.training.loop import LoopConfig

    base = load_base_model(folder, device="cpu", dtype=torch.float32)
    clock = Clock(warmup, torch.device("cpu"))
    config = ContrastiveConfig(loop=LoopConfig(steps=steps + 1, batch_size=batch, mixed_precision="no",
                                               checkpoint_every=10**9, log_every=0))
    with tempfile.TemporaryDirectory() as run:
        train_contrastive(base, dataset, vision, run, config, reporter=Reporter(progress=clock, log=lambda m: None))
    return clock.rate(steps)  # the last step is followed by the final checkpoint: timing ends one step before


def plain_step(folder: Path, vision: Path, dataset: Path, batch: int, steps: int, warmup: int) -> float:
    from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    from clif_core.augment.dataset import load_dataset

    ds = load_dataset(dataset)
    pictures = [ds[i].image for i in range(len(ds))]
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").float()
    tower = CLIPVisionModelWithProjection.from_pretrained(vision).float().eval().requires_grad_(False)
    processor = CLIPImageProcessor.from_pretrained(vision)
    new_tokens = [t for _, token, _, _ in CONCEPTS for t in (token, f"{token}_1")]
    tokenizer.add_tokens(new_tokens)
    encoder.resize_token_embeddings(len(tokenizer))
    keep = torch.ones(len(tokenizer), dtype=torch.bool)
    keep[tokenizer.convert_tokens_to_ids(new_tokens)] = False
    encoder.requires_grad_(False)
    table = encoder.get_input_embeddings().weight
    original = table.detach().clone()
    table.requires_grad_(True)
    width, dim = encoder.config.hidden_size, tower.config.projection_dim
    head = torch.nn.Linear(width, dim, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(dim, width))
    optimizer = torch.optim.AdamW([{"params": [table], "lr": 1e-4, "weight_decay": 0.0},
                                   {"params": head.parameters(), "lr": 1e-4}])
    captions = [ds.records[i].caption.replace("<alice>", "<alice> <alice>_1").replace("<bob>", "<bob> <bob>_1")
                for i in range(len(ds))]
    encoder.train()
    clock = Clock(warmup, torch.device("cpu"))
    for step in range(steps + 1):
        idx = [(step * batch + j) % len(ds) for j in range(batch)]
        with torch.no_grad():
            pixels = processor(images=[pictures[i] for i in idx], return_tensors="pt", do_rescale=False).pixel_values
            image = tower(pixel_values=pixels).image_embeds
        ids = tokenizer([captions[i] for i in idx], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        text = head(encoder(input_ids=ids).pooler_output)
        logits = SCALE * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        labels = torch.arange(batch)
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([table, head.weight], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            table[keep] = original[keep]
        loss.item()  # logged every step, as the pack's loop does
        clock(step, steps + 1)
    return clock.rate(steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batches", default="16")
    parser.add_argument("--samples", type=int, default=48, help="dataset size")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads per side")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    add_side_arguments(parser)
    args = parser.parse_args()
    folder = sandbox_folder()
    vision = folder.parent / "vision"
    if args.side:
        set_cpu_threads(args.threads)
        step = plain_step if args.side == "plain" else pack_step
        rate = step(folder, vision, Path(args.dataset), args.batch, args.steps, args.warmup)
        write_json(args.side_out, {"steps_s": rate, "peak_rss_mib": peak_rss_mib()})
        return 0
    resolution = native_resolution(folder)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"device: cpu, {args.threads} threads per side, sandbox model and vision tower at {resolution} px, "
          f"float32; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "ds", resolution, args.samples)

        def measure(side: str, batch: int) -> tuple[float, float]:
            out = run_side(Path(__file__).resolve(), [
                "--side", side, "--dataset", str(dataset), "--batch", str(batch), "--steps", str(args.steps),
                "--warmup", str(args.warmup), "--threads", str(args.threads)])
            return out["steps_s"], out["peak_rss_mib"]

        rows, ratios = compare(batches, measure, "peak RSS MiB")
    write_json(args.json, result("stage1_step", f"cpu, {args.threads} threads", {
        "steps": args.steps, "warmup": args.warmup, "batches": batches, "samples": args.samples,
        "model": "sandbox", "resolution": resolution}, rows, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
