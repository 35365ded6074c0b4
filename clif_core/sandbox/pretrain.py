"""`clif sandbox pretrain`: train the sandbox base model on the world, in three stages, resumable.

Stages, in order (each one's modules are frozen for the next):
1. `vae`  — AutoencoderKL, L1 reconstruction + a small KL term; then the latent scaling factor (1/std).
2. `clip` — CLIPTextModel + CLIPVisionModelWithProjection, symmetric InfoNCE on normalised pooled text /
   image embeddings with a learned logit scale; every image also scores a hard-negative caption (objects
   swapped or one attribute changed), so the text side must bind attributes to objects.
3. `unet` — UNet2DConditionModel on VAE latents, v-prediction with min-SNR weighting, frozen text encoder,
   10% empty captions for classifier-free guidance, EMA weights exported.

The training set is rendered once per run and kept on the device (images, tokenized captions, and in stage 3
the VAE's latent moments), so steps never wait for data. Each stage runs on the pack's shared training loop
(`pretrain_stages.py`); the work folder is described in `pretrain_store.py`. A run stops when `max_minutes` is
reached and checkpoints every `checkpoint_every` steps; running the same command again resumes. GPU commands
here are capped at ten minutes, so a full pretraining is several such runs. `export_model` then writes the
diffusers folder and the vision tower folder.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch

from clif_core.errors import ClifError
from clif_core.fileio import atomic_dir
from clif_core.progress import SILENT, Reporter
from clif_core.sandbox.model_arch import scheduler_config, tokenizer
from clif_core.sandbox.pretrain_config import STAGES, PretrainConfig, config_from_json
from clif_core.sandbox.pretrain_data import build_world_set
from clif_core.sandbox.pretrain_losses import CLIP_MEAN, CLIP_STD
from clif_core.sandbox.pretrain_stages import StageRunner, train_clip, train_unet, train_vae, unet_snapshot
from clif_core.sandbox.pretrain_store import PretrainState, load_all, load_state, write_checkpoint


def pretrain(
    cfg: PretrainConfig,
    work_dir: Union[str, Path],
    *,
    device: Optional[Union[str, torch.device]] = None,
    max_minutes: Optional[float] = None,
    render_workers: Optional[int] = None,
    reporter: Reporter = SILENT,
) -> PretrainState:
    """Train (or resume training) the sandbox model in `work_dir`. Returns the state; `.done` when finished."""
    started = time.time()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state = load_state(work)
    if state is None:
        state = PretrainState(stage=STAGES[0], step=0, config=json.loads(json.dumps(cfg.to_json())))
        write_checkpoint(work, state, cfg, {}, {})
    elif state.config != json.loads(json.dumps(cfg.to_json())):
        _reschedule(state, cfg, work, reporter)
    if state.done:
        reporter.log(f"{work}: pretraining already finished")
        return state
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state.device = str(torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu")
    deadline = started + max_minutes * 60 if max_minutes else None
    workers = render_workers if render_workers is not None else min(16, os.cpu_count() or 1)

    reporter.log(f"rendering {cfg.n_images} training scenes with {workers} process(es) ...")
    world = build_world_set(tokenizer(), cfg.n_images, cfg.seed, workers=workers, device=dev)
    reporter.log(f"rendered in {time.time() - started:.0f}s; training on {dev}")

    total = sum(cfg.stage(s).steps for s in STAGES)
    for name in STAGES[STAGES.index(state.stage):]:
        before = sum(cfg.stage(s).steps for s in STAGES[: STAGES.index(name)])
        runner = StageRunner(cfg, work, state, dev, reporter, deadline, total, before)
        if not {"vae": train_vae, "clip": train_clip, "unet": train_unet}[name](runner, world):
            return state
    reporter.log(f"pretraining finished: {json.dumps(state.seconds)} seconds per stage")
    return state


def _reschedule(state: PretrainState, cfg: PretrainConfig, work: Path, reporter: Reporter) -> None:
    """Resume with other step counts for the stage in progress (more than the steps it has done) and the stages
    after it; any other difference refuses. The learning-rate schedule of a rescheduled stage follows its new
    length from the step it is at; each change is recorded in the state and from there in the model's record."""
    saved = config_from_json(state.config)
    later = STAGES[STAGES.index(state.stage):] if not state.done else ()
    as_saved = replace(cfg, **{s: replace(cfg.stage(s), steps=saved.stage(s).steps) for s in later})
    changed = [s for s in later if cfg.stage(s).steps != saved.stage(s).steps]
    at = {s: state.step if s == state.stage else 0 for s in changed}
    if as_saved != saved or not changed or any(cfg.stage(s).steps <= at[s] for s in changed):
        raise ClifError(
            f"{work}: this work folder holds a pretraining with other settings; resume it with the same preset "
            "and options (only the step counts of stages not yet finished may change, to more steps than done), "
            "or give a new --work folder"
        )
    for s in changed:
        change = {"stage": s, "at_step": at[s], "steps_before": saved.stage(s).steps, "steps_after": cfg.stage(s).steps}
        state.schedule_changes.append(change)
        reporter.log(f"{s} stage rescheduled at step {at[s]}: {change['steps_before']} → {change['steps_after']} steps")
    state.config = json.loads(json.dumps(cfg.to_json()))


@dataclass(frozen=True)
class SandboxPaths:
    diffusers_dir: Path
    vision_dir: Path


def export_model(
    work_dir: Union[str, Path], out_dir: Union[str, Path], notes: Optional[dict] = None, unfinished: bool = False
) -> SandboxPaths:
    """Write the finished model as `out_dir/diffusers` (what `load_base_model` loads) and `out_dir/vision` (the
    matching vision tower), weights in float32 (so that diffusers' and transformers' `from_pretrained` without a
    `torch_dtype` give one dtype that runs on a CPU); `out_dir/diffusers/sandbox_model.json` records how it was made.

    `unfinished=True` exports the EMA weights of a UNet stage still in progress (a point of the learning curve);
    its record says at which step."""
    from transformers import CLIPImageProcessor

    from clif_core.models.loader import assemble_base_model, scheduler_from_config
    from clif_core.models.tiny import save_diffusers

    work = Path(work_dir)
    state = load_state(work)
    cfg = config_from_json(state.config) if state is not None else None
    snapshot = unet_snapshot(work, cfg) if unfinished and state is not None and state.stage == "unet" else None
    if state is None or not (state.done or snapshot):
        where = "nothing yet" if state is None else f"stage {state.stage} step {state.step}"
        need = "a UNet checkpoint" if unfinished else "the end of pretraining"
        raise ClifError(f"{work}: pretraining has not reached {need} ({where}); run `clif sandbox pretrain` again first")
    modules, extras = load_all(work, cfg, torch.device("cpu"))
    if snapshot is not None:
        notes = {**(notes or {}), "unfinished": {"stage": "unet", "step": snapshot[0], "of": cfg.unet.steps}}
        modules["unet_ema"] = snapshot[1]
    vae = modules["vae"]
    vae.register_to_config(scaling_factor=float(state.scaling_factor))
    base = assemble_base_model(
        family="sd1",
        unet=modules["unet_ema"],
        vae=vae,
        scheduler=scheduler_from_config(scheduler_config()),
        encoders=[modules["text"]],
        tokenizers=[tokenizer()],
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    logit_scale = float(extras["vision"]["logit_scale"])
    record = {
        "name": "clif-sandbox",
        "quality": cfg.quality,
        "note": QUALITY_NOTES.get(cfg.quality, ""),
        "fingerprint": base.fingerprint,
        "stages": {s: {"steps": cfg.stage(s).steps, "batch_size": cfg.stage(s).batch_size,
                       "seconds": round(state.seconds.get(s, 0.0), 1), "final_loss": state.final_loss.get(s)} for s in STAGES},
        "images": cfg.n_images,
        "vae_ceiling": state.vae_ceiling,
        "device": state.device,
        "config": state.config,
        "schedule_changes": state.schedule_changes,
        **(notes or {}),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "diffusers") as tmp:
        save_diffusers(base, tmp)
        (tmp / "sandbox_model.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    with atomic_dir(out / "vision") as tmp:
        modules["vision"].float().save_pretrained(tmp)
        CLIPImageProcessor(
            size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        ).save_pretrained(tmp)
        contrastive = {
            "text_features": "pooler_output of the text encoder (no projection)",
            "image_features": "image_embeds",
            "normalize": True,
            "logit_scale": logit_scale,
        }
        (tmp / "contrastive.json").write_text(json.dumps(contrastive, indent=1) + "\n", encoding="utf-8")
    return SandboxPaths(out / "diffusers", out / "vision")


QUALITY_NOTES = {
    "smoke": "SMOKE QUALITY: trained for minutes on two CPU cores to prove the pipeline end to end. Its images are "
    "blurry and it follows prompts poorly; replace it with a model from `clif sandbox pretrain --preset gpu`.",
    "test": "TEST MODEL: a few steps of a miniature architecture; images are noise.",
    "full": "Pretrained on one GPU with `clif sandbox pretrain --preset gpu`.",
    "cpu": "Pretrained on two CPU cores with `clif sandbox pretrain --preset cpu` (docs/sandbox.md has its measured "
    "prompt following).",
}
