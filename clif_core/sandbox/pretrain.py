"""`clif sandbox pretrain`: train the sandbox base model on the world, in three stages, resumable.

Stages, in order (each one's modules are frozen for the next):
1. `vae`  — AutoencoderKL, L1 reconstruction + a small KL term; then the latent scaling factor (1/std).
2. `clip` — CLIPTextModel + CLIPVisionModelWithProjection, symmetric InfoNCE on normalised pooled text /
   image embeddings with a learned logit scale; every image also scores a hard-negative caption (objects
   swapped or one attribute changed), so the text side must bind attributes to objects.
3. `unet` — UNet2DConditionModel on VAE latents, v-prediction with min-SNR weighting, frozen text encoder,
   10% empty captions for classifier-free guidance, EMA weights exported.

The training set is rendered once per run and kept on the device (images, tokenized captions, and in stage 3
the VAE's latent moments), so steps never wait for data. A run stops when `max_minutes` is reached and
checkpoints every `checkpoint_minutes`; running the same command again resumes. GPU commands here are
capped at ten minutes, so a full pretraining is several such runs. `export_model` then writes the diffusers
folder and the vision tower folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from clif_core.errors import Cancelled, ClifError
from clif_core.fileio import atomic_dir, save_safetensors_atomic, write_text_atomic
from clif_core.progress import SILENT, Reporter
from clif_core.sandbox.model_arch import (
    SandboxArch,
    build_text_encoder,
    build_unet,
    build_vae,
    build_vision_tower,
    scheduler_config,
    tokenizer,
)
from clif_core.sandbox.oracle import DEFAULT_WEIGHTS
from clif_core.sandbox.pretrain_data import WorldSet, build_world_set
from clif_core.sandbox.pretrain_losses import (
    CLIP_MEAN,
    CLIP_STD,
    VaeObjective,
    clip_loss,
    latent_moments,
    pixels,
    text_contexts,
    unet_loss,
    vae_loss,
)

STAGES = ("vae", "clip", "unet")
CHECKPOINT = "checkpoint"
_INIT_SEEDS = {"vae": 11, "text": 23, "vision": 37, "unet": 41}


@dataclass(frozen=True)
class StageConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100


@dataclass(frozen=True)
class PretrainConfig:
    arch: SandboxArch
    n_images: int
    vae: StageConfig
    clip: StageConfig
    unet: StageConfig
    seed: int = 0
    quality: str = "full"  # written into the model's metadata: "full", "smoke" or "test"
    kl_weight: float = 1e-6
    vae_objective: VaeObjective = VaeObjective()
    text_dropout: float = 0.1
    p_background_caption: float = 0.5
    min_snr_gamma: float = 5.0
    ema_power: float = 2 / 3  # diffusers EMAModel warm-up: decay = 1 - (1 + step)^-power, capped at 0.9999
    checkpoint_minutes: float = 3.0
    ceiling_renders: int = 1000  # fresh renders the VAE ceiling is measured on after the VAE stage
    checkpoint_dtype: str = "float32"  # "float16": half-size checkpoints without optimizer state (to carry)

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def to_json(self) -> dict:
        return asdict(self)


PRESETS: dict[str, PretrainConfig] = {
    # One H100: pre-rendered set and latents on the GPU, bf16 autocast, large batches. About 40 minutes in all,
    # run as several `--max-minutes 9` commands with `--checkpoint-dtype float16` (see docs/sandbox.md).
    "gpu": PretrainConfig(
        arch=SandboxArch(),
        n_images=200_000,
        vae=StageConfig(steps=8_000, batch_size=256, lr=1e-3, warmup=200),
        clip=StageConfig(steps=5_000, batch_size=1024, lr=5e-4, warmup=200),
        unet=StageConfig(steps=30_000, batch_size=512, lr=4e-4, warmup=500),
        quality="full",
    ),
    # Two CPU cores, at most six hours of wall-clock time in all: the smaller architecture, a VAE objective that
    # keeps what the oracle reads (docs/sandbox.md, "the VAE ceiling"), long UNet training. Run as several
    # `--max-minutes` commands across sessions; half-size checkpoints so the work folder can be committed.
    # The UNet stage is 12,000 steps: measured on two quiet cores a step takes 1.2-1.3 s, not the 0.8 s first
    # estimated, so 20,000 would have cost 7 hours alone (the shipped model's run was rescheduled at step 4,9xx).
    "cpu": PretrainConfig(
        arch=SandboxArch.smoke(),
        n_images=60_000,
        vae=StageConfig(steps=5_000, batch_size=32, lr=2e-3, warmup=50),
        clip=StageConfig(steps=2_000, batch_size=128, lr=1e-3, warmup=50),
        unet=StageConfig(steps=12_000, batch_size=64, lr=5e-4, warmup=200),
        vae_objective=VaeObjective(object_weight=8.0, gradient_weight=1.0, spectrum_weight=1.0),
        quality="cpu",
        checkpoint_minutes=10.0,
        checkpoint_dtype="float16",
    ),
    # Two CPU cores, about 15 minutes of CPU time: a smaller model, trained far too briefly to be good.
    "cpu-smoke": PretrainConfig(
        arch=SandboxArch.smoke(),
        n_images=5_000,
        vae=StageConfig(steps=1_200, batch_size=16, lr=2e-3, warmup=25),
        clip=StageConfig(steps=250, batch_size=64, lr=1e-3, warmup=25),
        unet=StageConfig(steps=650, batch_size=32, lr=1e-3, warmup=25),
        quality="smoke",
        checkpoint_minutes=5.0,
    ),
    # Seconds: exercises every code path (tests).
    "test": PretrainConfig(
        arch=SandboxArch.test(),
        n_images=48,
        vae=StageConfig(steps=3, batch_size=8, lr=1e-3, warmup=1),
        clip=StageConfig(steps=3, batch_size=8, lr=1e-3, warmup=1),
        unet=StageConfig(steps=4, batch_size=8, lr=1e-3, warmup=1),
        quality="test",
        checkpoint_minutes=0.0,
        ceiling_renders=16,
    ),
}


@dataclass
class PretrainState:
    """What `progress.json` in the checkpoint holds: where training stands."""

    stage: str  # the stage in progress, or "done"
    step: int  # steps done in that stage
    config: dict
    scaling_factor: Optional[float] = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall-clock per stage
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time per stage (all threads)
    final_loss: dict[str, float] = field(default_factory=dict)
    vae_ceiling: Optional[dict] = None  # the oracle on VAE reconstructions of fresh renders (vae_ceiling.py)
    device: str = ""
    # a run resumed with other step counts for stages not yet finished: {stage, at_step, steps_before, steps_after}
    schedule_changes: list[dict] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.stage == "done"


# --------------------------------------------------------------------------------------------- checkpoint


def _fresh(name: str, arch: SandboxArch, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + _INIT_SEEDS[name])
        return {"vae": build_vae, "text": build_text_encoder, "vision": build_vision_tower, "unet": build_unet}[name](arch)


def _token_key(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith("token_embedding.weight"))


def _tensors_to_save(name: str, module: torch.nn.Module, cfg: PretrainConfig, extra: dict) -> dict[str, torch.Tensor]:
    dtype = torch.float16 if cfg.checkpoint_dtype == "float16" else torch.float32
    state = {k: v.detach().to("cpu", dtype) for k, v in module.state_dict().items() if v.is_floating_point()}
    if name == "text":  # rows of tokens the world never uses stay at their initial values: store only the others
        key = _token_key(state)
        init = _fresh("text", cfg.arch, cfg.seed).state_dict()[key]
        current = module.state_dict()[key].detach().cpu().float()
        rows = torch.nonzero((current != init).any(dim=1)).flatten()
        state[key + ".changed_ids"] = rows.to(torch.int64)
        state[key + ".changed_rows"] = state.pop(key)[rows]
    state.update({k: v.detach().to("cpu", torch.float32) for k, v in extra.items()})
    return state


def _load_module(name: str, module: torch.nn.Module, folder: Path, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Load `name`.safetensors into `module`; returns tensors that are not module weights (e.g. logit_scale)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / f"{name}.safetensors"))
    own = module.state_dict()
    if name == "text":
        key = _token_key(own)
        table = _fresh("text", cfg.arch, cfg.seed).state_dict()[key].clone()
        table[state.pop(key + ".changed_ids")] = state.pop(key + ".changed_rows").float()
        state[key] = table
    extra = {k: state.pop(k) for k in list(state) if k not in own}
    missing = [k for k, v in own.items() if v.is_floating_point() and k not in state]
    if missing:
        raise ClifError(f"{folder / (name + '.safetensors')}: checkpoint lacks {missing[:3]}; start a new work folder")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return extra


def _checkpoint_dir(work: Path) -> Optional[Path]:
    # atomic_dir moves the previous checkpoint aside as .checkpoint.old-<pid> for an instant; a crash right
    # then leaves only that one.
    for candidate in [work / CHECKPOINT, *sorted(work.glob(f".{CHECKPOINT}.old-*"))]:
        if (candidate / "progress.json").is_file():
            return candidate
    return None


def load_state(work: Union[str, Path]) -> Optional[PretrainState]:
    folder = _checkpoint_dir(Path(work))
    if folder is None:
        return None
    path = folder / "progress.json"
    try:
        state = PretrainState(**json.loads(path.read_text(encoding="utf-8")))
        config_from_json(state.config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ClifError(f"{path} is not a sandbox pretraining checkpoint's record ({type(err).__name__}: {err}); "
                        "restore it from the copy you committed, or start a new --work folder") from None
    if state.stage not in (*STAGES, "done") or not isinstance(state.step, int) or state.step < 0:
        raise ClifError(f"{path}: stage {state.stage!r} step {state.step!r} is not a point of the pretraining; "
                        "restore the file, or start a new --work folder")
    return state


def _write_checkpoint(
    work: Path,
    state: PretrainState,
    cfg: PretrainConfig,
    modules: dict[str, torch.nn.Module],
    extras: dict[str, dict[str, torch.Tensor]],
    training: Optional[dict[str, Any]] = None,
) -> None:
    """Write a complete checkpoint folder beside the old one, then swap it in (never a half-written state)."""
    with atomic_dir(work / CHECKPOINT) as new:
        for name, module in modules.items():
            tensors = _tensors_to_save(name, module, cfg, extras.get(name, {}))
            save_safetensors_atomic(tensors, new / f"{name}.safetensors")
        if training is not None and cfg.checkpoint_dtype == "float32":
            torch.save(training, new / "training.pt")  # optimizer and generator states: tensors and numbers only
        write_text_atomic(new / "progress.json", json.dumps(asdict(state), indent=1))


# ------------------------------------------------------------------------------------------------ training


def _pick_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _lr_lambda(stage: StageConfig, changes: Sequence[dict] = ()) -> Callable[[int], float]:
    """Linear warm-up, then a cosine to zero at the stage's last step. A stage rescheduled mid-way (`changes`:
    its entries of `PretrainState.schedule_changes`, oldest first) keeps the schedule it had up to the change,
    then goes from the factor reached there to zero along a cosine over its new remaining steps (no jump); a
    change during the warm-up only sets the length of the cosine."""

    def cosine(step: int, steps: int) -> float:
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        progress = (step - stage.warmup) / max(1, steps - stage.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

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

    def decay(step: int, start: float, at: int, end: int) -> float:
        return start * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - at) / max(1, end - at))))

    return factor


class _Trainer:
    """Runs one stage's steps with checkpoints, a time limit, progress and cancel."""

    def __init__(self, cfg: PretrainConfig, work: Path, state: PretrainState, device: torch.device, reporter: Reporter,
                 deadline: Optional[float], total_steps: int, steps_before: int):
        self.cfg, self.work, self.state, self.device, self.reporter = cfg, work, state, device, reporter
        self.deadline, self.total_steps, self.steps_before = deadline, total_steps, steps_before
        # Seeded by stage and step, so a resume without saved generator state still draws new batches.
        self.gen = torch.Generator(device=device).manual_seed(
            cfg.seed * 7919 + STAGES.index(state.stage) * 1_000_003 + state.step
        )

    def run(
        self,
        params: list[dict],
        loss_fn: Callable[[torch.Generator], torch.Tensor],
        save_modules: Callable[[], tuple[dict[str, torch.nn.Module], dict[str, dict[str, torch.Tensor]]]],
        after_step: Callable[[], None] = lambda: None,
    ) -> bool:
        """Train the stage to its end (True) or until the deadline (False, checkpointed)."""
        stage = self.cfg.stage(self.state.stage)
        opt = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.01)
        lr_factor = _lr_lambda(stage, [c for c in self.state.schedule_changes if c["stage"] == self.state.stage])
        training_file = (_checkpoint_dir(self.work) or self.work / CHECKPOINT) / "training.pt"
        rewarm_from = None  # a resume without optimizer state restarts Adam: ramp the learning rate up again
        if self.state.step > 0 and training_file.is_file():
            saved = torch.load(training_file, map_location=self.device, weights_only=True)
            opt.load_state_dict(saved["optimizer"])
            self.gen.set_state(saved["generator"].cpu())
        elif self.state.step > 0:
            rewarm_from = self.state.step
        started, cpu_started = time.time(), time.process_time()
        last_save = started
        losses: list[float] = []
        name = self.state.stage
        while self.state.step < stage.steps:
            factor = lr_factor(self.state.step)
            if rewarm_from is not None:
                factor *= min(1.0, (self.state.step - rewarm_from + 1) / max(1, stage.warmup))
            for group in opt.param_groups:
                group["lr"] = stage.lr * factor
            with _autocast(self.device):
                loss = loss_fn(self.gen)
            if not torch.isfinite(loss):
                raise ClifError(
                    f"pretraining stage {name} step {self.state.step}: the loss is {float(loss)}; the last good "
                    f"checkpoint in {self.work} is kept. Lower the stage's learning rate and run again."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
            opt.step()
            after_step()
            self.state.step += 1
            losses.append(float(loss.detach()))
            step = self.state.step
            self.reporter.progress(self.steps_before + step, self.total_steps, None)
            if step % 50 == 0 or step == stage.steps:
                mean = sum(losses[-50:]) / len(losses[-50:])
                self.reporter.log(f"{name} step {step}/{stage.steps} loss {mean:.4f} lr {opt.param_groups[0]['lr']:.2e}")
            now = time.time()
            out_of_time = self.deadline is not None and now >= self.deadline
            stop = self.reporter.should_stop()
            periodic = self.cfg.checkpoint_minutes > 0 and now - last_save >= self.cfg.checkpoint_minutes * 60
            if (out_of_time or stop or periodic) and step < stage.steps:
                self._add_time(name, started, cpu_started)
                started, cpu_started = time.time(), time.process_time()
                self._save(save_modules, opt)
                last_save = now
                if stop:
                    raise Cancelled(f"pretraining stopped at {name} step {step}; run the same command to resume")
                if out_of_time:
                    self.reporter.log(f"time limit reached at {name} step {step}; run the same command to resume")
                    return False
        self._add_time(name, started, cpu_started)
        self.state.final_loss[name] = sum(losses[-50:]) / max(1, len(losses[-50:]))
        return True

    def _add_time(self, name: str, started: float, cpu_started: float) -> None:
        self.state.seconds[name] = self.state.seconds.get(name, 0.0) + (time.time() - started)
        self.state.cpu_seconds[name] = self.state.cpu_seconds.get(name, 0.0) + (time.process_time() - cpu_started)

    def _save(self, save_modules, opt) -> None:
        modules, extras = save_modules()
        training = {"optimizer": opt.state_dict(), "generator": self.gen.get_state()}
        _write_checkpoint(self.work, self.state, self.cfg, modules, extras, training)


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
        state = PretrainState(stage=STAGES[0], step=0, config=cfg.to_json())
    elif state.config != json.loads(json.dumps(cfg.to_json())):
        _reschedule(state, cfg, work, reporter)
    if state.done:
        reporter.log(f"{work}: pretraining already finished")
        return state
    dev = _pick_device(device)
    state.device = str(torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu")
    deadline = started + max_minutes * 60 if max_minutes else None
    workers = render_workers if render_workers is not None else min(16, os.cpu_count() or 1)

    reporter.log(f"rendering {cfg.n_images} training scenes with {workers} process(es) ...")
    world = build_world_set(tokenizer(), cfg.n_images, cfg.seed, workers=workers, device=dev)
    reporter.log(f"rendered in {time.time() - started:.0f}s; training on {dev}")

    total = sum(cfg.stage(s).steps for s in STAGES)
    for name in STAGES[STAGES.index(state.stage):]:
        if state.stage != name:
            state.stage, state.step = name, 0
        before = sum(cfg.stage(s).steps for s in STAGES[: STAGES.index(name)])
        trainer = _Trainer(cfg, work, state, dev, reporter, deadline, total, before)
        finished = {"vae": _train_vae, "clip": _train_clip, "unet": _train_unet}[name](trainer, world)
        if not finished:
            return state
    state.stage, state.step = "done", 0
    modules, extras = _load_all(work, cfg, torch.device("cpu"))
    _write_checkpoint(work, state, cfg, modules, extras)
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


def _load_all(work: Path, cfg: PretrainConfig, device: torch.device) -> tuple[dict, dict]:
    folder = _checkpoint_dir(work)
    modules, extras = {}, {}
    for name in ("vae", "text", "vision", "unet", "unet_ema"):
        if folder is not None and (folder / f"{name}.safetensors").is_file():
            module = _fresh("unet" if name == "unet_ema" else name, cfg.arch, cfg.seed)
            extras[name] = _load_module(name, module, folder, cfg)
            modules[name] = module.to(device)
    return modules, extras


def _train_vae(t: _Trainer, world: WorldSet) -> bool:
    cfg, stage = t.cfg, t.cfg.vae
    modules, extras = _load_all(t.work, cfg, t.device)
    vae = modules["vae"] if "vae" in modules else _fresh("vae", cfg.arch, cfg.seed).to(t.device)
    vae.train()

    loss_fn = vae_loss(vae, world, stage.batch_size, cfg.kl_weight, cfg.vae_objective)
    done = t.run([{"params": list(vae.parameters())}], loss_fn, lambda: ({"vae": vae}, {}))
    if done:
        t.state.scaling_factor = _scaling_factor(vae, world, t.device)
        if DEFAULT_WEIGHTS.is_file() and cfg.ceiling_renders > 0:
            from clif_core.sandbox.vae_ceiling import vae_ceiling

            ceiling = vae_ceiling(vae.eval(), n=cfg.ceiling_renders, n_per_set=cfg.ceiling_renders // 3)
            t.state.vae_ceiling = ceiling
            per_set = ", ".join(f"{k} {v['reconstructed']:.3f}/{v['clean']:.3f}" for k, v in ceiling["per_set"].items())
            t.reporter.log(f"VAE ceiling: oracle reads {ceiling['reconstructed']['scene']:.3f} of reconstructions, "
                           f"{ceiling['clean']['scene']:.3f} of the renders; per prompt set {per_set}")
        t.state.stage, t.state.step = "clip", 0
        _write_checkpoint(t.work, t.state, cfg, {"vae": vae}, {})
    return done


@torch.no_grad()
def _scaling_factor(vae, world: WorldSet, device: torch.device, n: int = 4096) -> float:
    vae.eval()
    samples = []
    for i in range(0, min(n, len(world)), 256):
        idx = torch.arange(i, min(i + 256, len(world), n), device=device)
        with _autocast(device):
            samples.append(vae.encode(pixels(world, idx)).latent_dist.sample().float())
    return float(1.0 / torch.cat(samples).std())


def _train_clip(t: _Trainer, world: WorldSet) -> bool:
    cfg, stage = t.cfg, t.cfg.clip
    modules, extras = _load_all(t.work, cfg, t.device)
    text = modules["text"] if "text" in modules else _fresh("text", cfg.arch, cfg.seed).to(t.device)
    vision = modules["vision"] if "vision" in modules else _fresh("vision", cfg.arch, cfg.seed).to(t.device)
    saved_scale = extras.get("vision", {}).get("logit_scale")
    logit_scale = torch.nn.Parameter(
        saved_scale.to(t.device) if saved_scale is not None else torch.tensor(math.log(1 / 0.07), device=t.device)
    )
    text.train()
    vision.train()
    embedding = text.get_input_embeddings().weight
    others = [p for p in text.parameters() if p is not embedding] + list(vision.parameters())
    # No weight decay on the token table: rows of tokens the world never uses stay exactly as initialised.
    params = [{"params": [embedding], "weight_decay": 0.0}, {"params": others}, {"params": [logit_scale], "weight_decay": 0.0}]

    loss_fn = clip_loss(text, vision, logit_scale, world, stage.batch_size, cfg.p_background_caption)

    def save():
        return {"vae": modules["vae"], "text": text, "vision": vision}, {"vision": {"logit_scale": logit_scale.detach()}}

    done = t.run(params, loss_fn, save)
    if done:
        t.state.stage, t.state.step = "unet", 0
        _write_checkpoint(t.work, t.state, cfg, *save())
    return done


def _train_unet(t: _Trainer, world: WorldSet) -> bool:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    cfg, stage = t.cfg, t.cfg.unet
    modules, extras = _load_all(t.work, cfg, t.device)
    vae, text = modules["vae"].eval(), modules["text"].eval()
    unet = modules["unet"] if "unet" in modules else _fresh("unet", cfg.arch, cfg.seed).to(t.device)
    unet.train()
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=cfg.ema_power)
    if "unet_ema" in modules:
        ema.shadow_params = [p.detach().clone() for p in modules["unet_ema"].parameters()]
    ema.optimization_step = t.state.step  # one EMA update per training step
    noise_schedule = DDPMScheduler.from_config(scheduler_config())

    t.reporter.log("encoding the training set with the VAE and the frozen text encoder ...")
    with _autocast(t.device):
        moments = latent_moments(vae, world)
        contexts = text_contexts(text, world)
    loss_fn = unet_loss(
        unet, noise_schedule, moments, contexts, float(t.state.scaling_factor), stage.batch_size,
        cfg.p_background_caption, cfg.text_dropout, cfg.min_snr_gamma,
    )

    def ema_module() -> torch.nn.Module:
        shadow = _fresh("unet", cfg.arch, cfg.seed)
        ema.copy_to(shadow.parameters())
        return shadow

    def save():
        kept = {k: modules[k] for k in ("vae", "text", "vision")}
        return {**kept, "unet": unet, "unet_ema": ema_module()}, {"vision": extras.get("vision", {})}

    done = t.run([{"params": list(unet.parameters())}], loss_fn, save, after_step=lambda: ema.step(unet.parameters()))
    if done:
        _write_checkpoint(t.work, t.state, cfg, *save())
    return done


# ---------------------------------------------------------------------------------------------------- export


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
    in_unet = state is not None and state.stage == "unet" and (_checkpoint_dir(work) / "unet_ema.safetensors").is_file()
    if state is None or not (state.done or (unfinished and in_unet)):
        where = "nothing yet" if state is None else f"stage {state.stage} step {state.step}"
        need = "a UNet checkpoint" if unfinished else "the end of pretraining"
        raise ClifError(f"{work}: pretraining has not reached {need} ({where}); run `clif sandbox pretrain` again first")
    cfg = config_from_json(state.config)
    if not state.done:
        notes = {**(notes or {}), "unfinished": {"stage": state.stage, "step": state.step, "of": cfg.unet.steps}}
    modules, extras = _load_all(work, cfg, torch.device("cpu"))
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


def config_from_json(data: dict) -> PretrainConfig:
    return PretrainConfig(
        arch=SandboxArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["arch"].items()}),
        **{k: StageConfig(**v) if k in STAGES else VaeObjective(**v) if k == "vae_objective" else v
           for k, v in data.items() if k != "arch"},
    )


def with_overrides(cfg: PretrainConfig, **changes: Any) -> PretrainConfig:
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})
