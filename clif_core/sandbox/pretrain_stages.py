"""The pretraining's three stages, each a task of the shared training loop (`clif_core.training.loop`).

What the sandbox adds to the loop, through `LoopHooks`: its learning-rate schedule (warm-up, then a cosine to
zero, continued without a jump when a stage is rescheduled), the UNet's EMA (updated after every step and kept in
every checkpoint), and a time limit (`--max-minutes`) read as a stop request: the loop checkpoints the finished
steps and the next run resumes there. Batches are the world set in a fresh random order each epoch; the noise
of step s comes from the loop's generator seeded by (seed, s), so a resumed stage continues bit-identically.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from clif_core.errors import Cancelled
from clif_core.progress import Reporter
from clif_core.sandbox.oracle import DEFAULT_WEIGHTS
from clif_core.sandbox.pretrain_config import STAGES, PretrainConfig, StageConfig
from clif_core.sandbox.pretrain_data import WorldSet
from clif_core.sandbox.pretrain_losses import (
    Loss,
    clip_loss,
    latent_moments,
    pixels,
    text_contexts,
    unet_loss,
    vae_loss,
)
from clif_core.sandbox.pretrain_store import (
    PretrainState,
    fresh_module,
    load_all,
    stage_run,
    write_checkpoint,
    write_progress,
)
from clif_core.training.loop import LoopConfig, LoopHooks, ParamGroup, run_training
from clif_core.training.precision import make_accelerator, resolve_precision
from clif_core.training.run_folder import RunFolder

LOG_EVERY = 50


def lr_schedule(stage: StageConfig, changes: Sequence[dict] = ()) -> Callable[[int], float]:
    """Linear warm-up, then a cosine to zero at the stage's last step. A stage rescheduled mid-way (`changes`:
    its entries of `PretrainState.schedule_changes`, oldest first) keeps the schedule it had up to the change,
    then goes from the factor reached there to zero along a cosine over its new remaining steps (no jump); a
    change during the warm-up only sets the length of the cosine."""

    def cosine(step: int, steps: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        progress = (step - stage.warmup) / max(1, steps - stage.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def decay(step: int, start: float, at: int, end: int) -> float:
        return start * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - at) / max(1, end - at))))

    def factor(step: int) -> float:
        schedule: Callable[[int], float] = partial(cosine, steps=changes[0]["steps_before"] if changes else stage.steps)
        for change in changes:
            at, end = change["at_step"], change["steps_after"]
            if step < at:
                break
            if at < stage.warmup:
                schedule = partial(cosine, steps=end)
                continue
            schedule = partial(decay, start=schedule(at), at=at, end=end)
        return schedule(step)

    return factor


@dataclass
class WorldStage:
    """A stage as the loop's TrainTask: the world set's images in a random order per epoch, `loss` over them."""

    world: WorldSet
    loss_fn: Loss
    groups: list[ParamGroup]
    trained: list[torch.nn.Module]

    def param_groups(self) -> list[ParamGroup]:
        return self.groups

    def modules(self) -> list[torch.nn.Module]:
        return self.trained

    def num_samples(self) -> int:
        return len(self.world)

    def epoch_order(self, epoch: int, seed: int, batch_size: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        return torch.randperm(len(self.world), generator=gen).tolist()

    def load_batch(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(indices), device=self.world.images.device)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(batch, None)

    def preview(self, step: int) -> None:
        return None


class _TimeLimit:
    """The caller's stop request, or the deadline once this run has made at least one step (so that a run always
    progresses, however short its limit)."""

    def __init__(self, reporter: Reporter, deadline: Optional[float]):
        self.reporter, self.deadline = reporter, deadline
        self.first: Optional[int] = None
        self.last = 0
        self.asked = False

    def progress(self, step: int) -> None:
        self.first = step if self.first is None else self.first
        self.last = step

    def should_stop(self) -> bool:
        self.asked = self.reporter.should_stop()
        out_of_time = self.deadline is not None and time.time() >= self.deadline
        return self.asked or (out_of_time and self.first is not None and self.last > self.first)


@dataclass
class StageRunner:
    """Runs one stage of a pretraining on the shared loop and keeps its state's time and loss."""

    cfg: PretrainConfig
    work: Path
    state: PretrainState
    device: torch.device
    reporter: Reporter
    deadline: Optional[float]
    total_steps: int
    steps_before: int
    hooks: LoopHooks = field(default_factory=LoopHooks)

    def run(self, groups: list[ParamGroup], loss_fn: Loss, trained: list[torch.nn.Module], world: WorldSet) -> bool:
        """Train the stage to its end (True) or until the time limit (False, checkpointed)."""
        name = self.state.stage
        stage = self.cfg.stage(name)
        changes = [c for c in self.state.schedule_changes if c["stage"] == name]
        loop = LoopConfig(
            steps=stage.steps, batch_size=stage.batch_size, grad_accum=1, mixed_precision="auto",
            gradient_checkpointing=False, adam_8bit=False, weight_decay=0.01, adam_betas=(0.9, 0.99),
            max_grad_norm=1.0, warmup_steps=stage.warmup, seed=self.cfg.seed * 7919 + STAGES.index(name),
            checkpoint_every=self.cfg.checkpoint_every, keep_checkpoints=1, preview_every=0, log_every=LOG_EVERY,
        )
        run = stage_run(self.work, name)
        run.open({"stage": name, "pretraining": self.cfg.to_json()})
        limit = _TimeLimit(self.reporter, self.deadline)

        def progress(step: int, _steps: int, preview: Any = None) -> None:
            limit.progress(step)
            self.reporter.progress(self.steps_before + step, self.total_steps, preview)

        reporter = Reporter(progress=progress, should_stop=limit.should_stop, log=self.reporter.log)
        hooks = replace(self.hooks, lr_factor=lr_schedule(stage, changes))
        started, cpu_started = time.time(), time.process_time()
        task = WorldStage(world, loss_fn, groups, trained)
        try:
            result = run_training(task, loop, run, make_accelerator(loop, self.device), reporter, f"pretraining {name}",
                                  hooks)
        except BaseException as stopped:  # the loop has checkpointed the finished steps: record the time spent
            self._add_time(started, cpu_started)
            self.state.step = limit.last
            write_progress(self.work, self.state)
            if not isinstance(stopped, Cancelled):
                raise
            if limit.asked:
                raise Cancelled(f"pretraining stopped at {name} step {limit.last}; run the same command to resume") from None
            self.reporter.log(f"time limit reached at {name} step {limit.last}; run the same command to resume")
            return False
        self._add_time(started, cpu_started)
        last = [loss for _step, loss, _lr in result.history[-LOG_EVERY:]]
        self.state.final_loss[name] = sum(last) / max(1, len(last))
        self.state.step = stage.steps
        return True

    def finish(self, next_stage: str, modules: dict[str, torch.nn.Module], extras: dict) -> None:
        """The stage's weights into the work folder's checkpoint, its run folder's checkpoints removed."""
        run: RunFolder = stage_run(self.work, self.state.stage)
        self.state.stage, self.state.step = next_stage, 0
        write_checkpoint(self.work, self.state, self.cfg, modules, extras)
        for _step, path in run.checkpoints():
            path.unlink()

    def _add_time(self, started: float, cpu_started: float) -> None:
        name = self.state.stage
        self.state.seconds[name] = self.state.seconds.get(name, 0.0) + (time.time() - started)
        self.state.cpu_seconds[name] = self.state.cpu_seconds.get(name, 0.0) + (time.process_time() - cpu_started)


def _named(prefix: str, module: torch.nn.Module, skip: Sequence[torch.Tensor] = ()) -> dict[str, torch.nn.Parameter]:
    return {f"{prefix}.{k}": p for k, p in module.named_parameters() if not any(p is s for s in skip)}


def train_vae(t: StageRunner, world: WorldSet) -> bool:
    cfg, stage = t.cfg, t.cfg.vae
    vae = fresh_module("vae", cfg.arch, cfg.seed).to(t.device)
    loss_fn = vae_loss(vae, world, cfg.kl_weight, cfg.vae_objective)
    if not t.run([ParamGroup("vae", _named("vae", vae), stage.lr)], loss_fn, [vae], world):
        return False
    t.state.scaling_factor = _scaling_factor(vae, world, t.device, cfg.seed)
    if DEFAULT_WEIGHTS.is_file() and cfg.ceiling_renders > 0:
        from clif_core.sandbox.vae_ceiling import vae_ceiling

        ceiling = vae_ceiling(vae.eval(), n=cfg.ceiling_renders, n_per_set=cfg.ceiling_renders // 3)
        t.state.vae_ceiling = ceiling
        per_set = ", ".join(f"{k} {v['reconstructed']:.3f}/{v['clean']:.3f}" for k, v in ceiling["per_set"].items())
        t.reporter.log(f"VAE ceiling: oracle reads {ceiling['reconstructed']['scene']:.3f} of reconstructions, "
                       f"{ceiling['clean']['scene']:.3f} of the renders; per prompt set {per_set}")
    t.finish("clip", {"vae": vae}, {})
    return True


def _autocast(device: torch.device):
    """The loop's "auto" precision (`resolve_precision`) for the stages' frozen passes: none on the CPU."""
    precision = resolve_precision("auto", device)
    if precision == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def _scaling_factor(vae: Any, world: WorldSet, device: torch.device, seed: int, n: int = 4096) -> float:
    """1 / std of latents sampled from the VAE's posteriors (its own generator: the same in any process)."""
    vae.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = []
    for i in range(0, min(n, len(world)), 256):
        idx = torch.arange(i, min(i + 256, len(world), n), device=device)
        with _autocast(device):
            samples.append(vae.encode(pixels(world, idx)).latent_dist.sample(generator=gen).float())
    return float(1.0 / torch.cat(samples).std())


def train_clip(t: StageRunner, world: WorldSet) -> bool:
    cfg, stage = t.cfg, t.cfg.clip
    modules, _ = load_all(t.work, cfg, t.device)
    text = fresh_module("text", cfg.arch, cfg.seed).to(t.device)
    vision = fresh_module("vision", cfg.arch, cfg.seed).to(t.device)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=t.device))
    embedding = text.get_input_embeddings().weight
    embedding_name = next(k for k, p in text.named_parameters() if p is embedding)
    # No weight decay on the token table: rows of tokens the world never uses stay exactly as initialised.
    groups = [
        ParamGroup("tokens", {f"text.{embedding_name}": embedding}, stage.lr, weight_decay=0.0),
        ParamGroup("towers", {**_named("text", text, [embedding]), **_named("vision", vision)}, stage.lr),
        ParamGroup("scale", {"logit_scale": logit_scale}, stage.lr, weight_decay=0.0),
    ]
    loss_fn = clip_loss(text, vision, logit_scale, world, cfg.p_background_caption)
    if not t.run(groups, loss_fn, [text, vision], world):
        return False
    t.finish("unet", {"vae": modules["vae"], "text": text, "vision": vision},
             {"vision": {"logit_scale": logit_scale.detach()}})
    return True


def train_unet(t: StageRunner, world: WorldSet) -> bool:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from clif_core.sandbox.model_arch import scheduler_config

    cfg, stage = t.cfg, t.cfg.unet
    modules, extras = load_all(t.work, cfg, t.device)
    vae, text = modules["vae"].eval(), modules["text"].eval()
    unet = fresh_module("unet", cfg.arch, cfg.seed).to(t.device)
    names = [k for k, _ in unet.named_parameters()]
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=cfg.ema_power)

    def ema_state() -> dict[str, torch.Tensor]:
        return {**{f"ema.{k}": p for k, p in zip(names, ema.shadow_params)},
                "ema_updates": torch.tensor(ema.optimization_step)}

    def load_ema(saved: dict[str, torch.Tensor]) -> None:
        ema.shadow_params = [saved[f"ema.{k}"].to(t.device) for k in names]
        ema.optimization_step = int(saved["ema_updates"])

    t.hooks = LoopHooks(after_update=lambda: ema.step(unet.parameters()), state=ema_state, load_state=load_ema)
    t.reporter.log("encoding the training set with the VAE and the frozen text encoder ...")
    with _autocast(t.device):
        moments = latent_moments(vae, world)
        contexts = text_contexts(text, world)
    loss_fn = unet_loss(unet, DDPMScheduler.from_config(scheduler_config()), moments, contexts,
                        float(t.state.scaling_factor), cfg.p_background_caption, cfg.text_dropout, cfg.min_snr_gamma)
    if not t.run([ParamGroup("unet", _named("unet", unet), stage.lr)], loss_fn, [unet], world):
        return False
    kept = {k: modules[k] for k in ("vae", "text", "vision")}
    shadow = fresh_module("unet", cfg.arch, cfg.seed)
    ema.copy_to(shadow.parameters())
    t.finish("done", {**kept, "unet": unet, "unet_ema": shadow}, {"vision": extras.get("vision", {})})
    return True


def unet_snapshot(work: Path, cfg: PretrainConfig) -> Optional[tuple[int, torch.nn.Module]]:
    """The UNet stage's EMA weights at its latest checkpoint (a point of the learning curve) and that step, or
    None before the stage's first checkpoint."""
    from clif_core.training.checkpoint import load_checkpoint

    found = stage_run(work, "unet").checkpoints()
    if not found:
        return None
    step, path = found[-1]
    saved = load_checkpoint(path).extra
    unet = fresh_module("unet", cfg.arch, cfg.seed)
    with torch.no_grad():
        for k, p in unet.named_parameters():
            p.copy_(saved[f"ema.{k}"])
    return step, unet
