"""The training loop every trainer of the pack shares (CLIF's two stages, erasure, the sandbox pretraining).

A trainer supplies a `TrainTask`: its trainable parameter groups, its modules, how many samples it has,
the order of one epoch, how to load a batch and its loss. `run_training` owns the rest:

- accelerate: device, mixed precision (no / fp16 / bf16 autocast over fp32 master weights), fp16 loss
  scaling, several processes (`accelerate launch`; gradients are averaged over processes every step);
- gradient accumulation, gradient clipping, linear warm-up, gradient checkpointing, AdamW (8-bit with
  bitsandbytes on CUDA);
- a fixed seed. The random numbers of micro-step m on process r come from a generator seeded with
  (seed, m, r), and the data order of epoch e from (seed, e): both are functions of the step, so a
  checkpoint (trainable tensors, optimizer, scaler, loss history, step) resumes bit-identically, and
  nothing the caller does between steps (previews, other nodes) can change the run;
- the Reporter: progress every step with a preview every `preview_every` steps (also saved as
  RUN/previews/step-N.png), a cancel check before
  every micro-step. A cancel (or an exception from the reporter, as ComfyUI's interrupt) between steps
  saves a checkpoint of the finished steps first, so running again continues where it stopped;
- periodic checkpoints into the run folder (the last `keep_checkpoints` kept), the loss curve as CSV/PNG;
- a loss that is not finite stops the run with a ClifError before the optimizer step, and trainable weights
  that turn NaN or infinite (checked every `WEIGHT_CHECK_EVERY` steps and before every checkpoint) stop it
  after the step; either way the last good checkpoint stays as it is and nothing final is written.
A trainer that needs more than a TrainTask gives `LoopHooks`: its own learning-rate schedule, a call after
every optimizer step (an EMA of the weights) and state that checkpoints keep beside the trainable tensors.
The loop never writes a trainer's final output: trainers do that after `run_training` returns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from clif_core.errors import Cancelled, ClifError
from clif_core.fileio import atomic_path
from clif_core.options import LOOP, PRECISIONS
from clif_core.progress import SILENT, Reporter
from clif_core.validation import check_finite_fields

from .checkpoint import Checkpoint, checkpoint_name, load_checkpoint, save_checkpoint
from .curve import draw_loss_curve, save_loss_png, write_loss_csv
from .optim import make_optimizer, warmup_factor
from .run_folder import RunFolder

WEIGHT_CHECK_EVERY = 10
"""Steps between checks that the trainable weights are finite (one pass over them; also before every save)."""


@dataclass
class LoopConfig:
    """How to train, independent of what is trained. `batch_size` is per process and micro-step; the
    effective batch is batch_size × grad_accum × processes. Defaults, limits and help: `options.LOOP` (each
    stage's config derives its own defaults there)."""

    steps: int = LOOP.field("steps")
    batch_size: int = LOOP.field("batch_size")
    grad_accum: int = LOOP.field("grad_accum")
    mixed_precision: str = LOOP.field("mixed_precision")  # auto: bf16 on CUDA (fp16 where unsupported), no on CPU
    gradient_checkpointing: bool = LOOP.field("gradient_checkpointing")
    adam_8bit: bool = LOOP.field("adam_8bit")  # used when bitsandbytes is installed and the device is CUDA
    weight_decay: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = LOOP.field("max_grad_norm")  # 0 turns clipping off
    warmup_steps: int = LOOP.field("warmup_steps")
    seed: int = LOOP.field("seed")
    checkpoint_every: int = LOOP.field("checkpoint_every")
    keep_checkpoints: int = LOOP.field("keep_checkpoints")
    preview_every: int = LOOP.field("preview_every")  # 0: no previews
    log_every: int = LOOP.field("log_every")

    def check(self) -> None:
        check_finite_fields(self, "training setting")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ClifError(f"training setting {name} is {getattr(self, name)}; it must be at least 1")
        for name in ("preview_every", "log_every", "warmup_steps", "weight_decay", "max_grad_norm", "adam_eps"):
            if getattr(self, name) < 0:
                raise ClifError(f"training setting {name} is {getattr(self, name)}; it cannot be negative")
        if self.mixed_precision not in PRECISIONS:
            raise ClifError(f"mixed_precision {self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


@dataclass
class ParamGroup:
    """Trainable tensors that share a learning rate. Names must be stable across runs (checkpoints use them)."""

    name: str
    params: dict[str, torch.nn.Parameter]
    lr: float
    weight_decay: Optional[float] = None  # None: LoopConfig.weight_decay


class TrainTask(Protocol):
    """What a trainer gives the loop. Every method must be deterministic given the global random state."""

    def param_groups(self) -> list[ParamGroup]: ...

    def modules(self) -> list[torch.nn.Module]:
        """Modules to put in train mode (and gradient checkpointing) while training."""
        ...

    def num_samples(self) -> int: ...

    def epoch_order(self, epoch: int, seed: int, batch_size: int) -> list[int]:
        """Sample indices of one epoch in order; the loop cuts it into consecutive batches of
        batch_size × processes (process r takes the r-th slice of batch_size) and drops the remainder."""
        ...

    def load_batch(self, indices: Sequence[int]) -> Any: ...

    def loss(self, batch: Any) -> torch.Tensor:
        """A scalar loss (called under the accelerator's autocast)."""
        ...

    def preview(self, step: int) -> Optional[Any]:
        """A PIL image showing the state after `step` steps, or None for the loss curve."""
        ...


@dataclass
class LoopHooks:
    """What a trainer may change in the loop besides its TrainTask; every hook is optional."""

    lr_factor: Optional[Callable[[int], float]] = None
    """The learning rate's factor at step s (0 for the first), in place of the linear warm-up."""
    after_update: Optional[Callable[[], None]] = None
    """Called after every optimizer step, e.g. to update an EMA of the weights."""
    state: Optional[Callable[[], dict[str, torch.Tensor]]] = None
    """Tensors every checkpoint keeps beside the trainable ones (an EMA's weights)..."""
    load_state: Optional[Callable[[dict[str, torch.Tensor]], None]] = None
    """...and how a resumed run takes them back."""


@dataclass
class TrainResult:
    steps: int
    history: list[tuple[int, float, float]]
    resumed_from: Optional[int]  # the checkpoint step this call started from
    optimizer: str
    precision: str
    processes: int
    run: RunFolder = field(repr=False)

    @property
    def final_loss(self) -> float:
        return self.history[-1][1] if self.history else math.nan


def sub_reporter(reporter: Reporter, offset: int, total: int) -> Reporter:
    """A Reporter for one part of a longer job: steps are shifted by `offset` within `total`."""
    return Reporter(
        progress=lambda step, _steps, preview=None: reporter.progress(offset + step, total, preview),
        should_stop=reporter.should_stop,
        log=reporter.log,
    )


def _micro_seed(seed: int, micro_step: int, rank: int) -> int:
    digest = hashlib.blake2b(f"clif:{seed}:{micro_step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _set_gradient_checkpointing(modules: Sequence[torch.nn.Module], on: bool) -> None:
    """Switch activation checkpointing on a diffusers or transformers module (transformers 5 renamed it)."""
    for module in modules:
        if hasattr(module, "enable_gradient_checkpointing"):  # diffusers
            module.enable_gradient_checkpointing() if on else module.disable_gradient_checkpointing()
        elif hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5
            if on:
                module.activation_checkpointing_enable({"use_reentrant": False})
            else:
                module.activation_checkpointing_disable()
        elif hasattr(module, "gradient_checkpointing_enable"):  # transformers 4
            if on:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_disable()


class _EpochOrders:
    """Epoch orders, computed once each (a task's order may be costly, e.g. the hard-negative composer)."""

    def __init__(self, task: TrainTask, seed: int, batch_size: int):
        self.task, self.seed, self.batch_size = task, seed, batch_size
        self.epoch, self.order = -1, []

    def get(self, epoch: int) -> list[int]:
        if epoch != self.epoch:
            self.epoch, self.order = epoch, list(self.task.epoch_order(epoch, self.seed, self.batch_size))
        return self.order


def _non_finite(named: dict[str, torch.nn.Parameter]) -> Optional[str]:
    """The name of the first trainable tensor holding NaN or infinity, else None (one read from the device for
    all the tensors, not one per tensor: a LoRA has a hundred)."""
    values = list(named.values())
    flags = torch.stack([torch.isfinite(p).all().to(values[0].device) for p in values]).tolist()
    return next((k for k, ok in zip(named, flags) if not ok), None)


def _last_good(run: RunFolder) -> str:
    kept = run.checkpoints()
    return f"the last good checkpoint is {kept[-1][1]} (step {kept[-1][0]})" if kept else \
        "no checkpoint was written yet"


def run_training(
    task: TrainTask,
    config: LoopConfig,
    run: RunFolder,
    accelerator: Any,
    reporter: Reporter = SILENT,
    label: str = "training",
    hooks: Optional[LoopHooks] = None,
) -> TrainResult:
    """Train `task` for `config.steps` optimizer steps, resuming from the run folder's latest checkpoint.

    `run` must have been opened (`RunFolder.open`) with the recipe of this run. Returns the loss history of
    the whole run (earlier sessions included). Raises Cancelled when the reporter asks to stop and ClifError
    when the loss or the trainable weights are not finite.
    """
    config.check()
    session = _Session(task, config, run, accelerator, reporter, label, hooks or LoopHooks())
    found = session.resume()
    session.check_batches()
    session.train()
    return TrainResult(
        steps=session.step, history=session.history, resumed_from=found[0] if found else None,
        optimizer=session.optimizer_name, precision=accelerator.mixed_precision, processes=session.world, run=run,
    )


def _trainable(groups: Sequence[ParamGroup], label: str) -> dict[str, torch.nn.Parameter]:
    """Every trainable tensor by "group/name", switched to requiring gradients; float32 master weights only."""
    named: dict[str, torch.nn.Parameter] = {}
    for g in groups:
        for name, p in g.params.items():
            key = f"{g.name}/{name}"
            if key in named:
                raise ValueError(f"trainable tensor {key} appears twice")
            if p.dtype != torch.float32:
                raise ValueError(f"trainable tensor {key} is {p.dtype}; master weights must be float32")
            p.requires_grad_(True)
            named[key] = p
    if not named:
        raise ClifError(f"{label}: nothing to train (every trainable part is switched off)")
    return named


class _Session:
    """One call of `run_training`: the trainable tensors, their optimizer, the loss history and the step."""

    def __init__(self, task: TrainTask, config: LoopConfig, run: RunFolder, accelerator: Any, reporter: Reporter,
                 label: str, hooks: LoopHooks):
        self.task, self.config, self.run, self.accelerator = task, config, run, accelerator
        self.reporter, self.label, self.hooks = reporter, label, hooks
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.main = accelerator.is_main_process
        groups = task.param_groups()
        self.named = _trainable(groups, label)
        self.params = list(self.named.values())
        torch_groups = [
            {"params": list(g.params.values()), "lr": g.lr, "initial_lr": g.lr,
             **({"weight_decay": g.weight_decay} if g.weight_decay is not None else {})}
            for g in groups
        ]
        self.device = accelerator.device
        optimizer, self.optimizer_name = make_optimizer(
            torch_groups, self.device, config.adam_8bit, tuple(config.adam_betas), config.adam_eps, config.weight_decay
        )
        self.optimizer = accelerator.prepare_optimizer(optimizer)
        self.history: list[tuple[int, float, float]] = []
        self.step = 0
        self.last_saved = 0
        self.between_steps = True
        self.per_batch = config.batch_size * self.world
        self.orders = _EpochOrders(task, config.seed, config.batch_size)
        self.per_epoch = 0

    def resume(self) -> Optional[tuple[int, Any]]:
        """Load the run folder's latest checkpoint (tensors, optimizer, scaler, history, step), if there is one."""
        found = self.run.latest_checkpoint(self.config.steps)
        if found is not None:
            ckpt = load_checkpoint(found[1])
            if sorted(ckpt.params) != sorted(self.named):
                raise ClifError(
                    f"checkpoint {found[1]} holds the tensors of another setup; restart the run or use another run "
                    "name"
                )
            with torch.no_grad():
                for key, p in self.named.items():
                    p.copy_(ckpt.params[key])
            self.optimizer.load_state_dict(ckpt.optimizer)
            if self.hooks.load_state is not None:
                self.hooks.load_state(ckpt.extra)
            if self.accelerator.scaler is not None and ckpt.scaler:
                self.accelerator.scaler.load_state_dict(ckpt.scaler)
            self.history, self.step = list(ckpt.history), ckpt.step
            self.reporter.log(f"{self.label}: resuming from step {self.step} ({found[1].name})")
        self.last_saved = self.step
        return found

    def check_batches(self) -> None:
        """At least one full batch per epoch, or a ClifError that says what to change."""
        self.per_epoch = len(self.orders.get(0)) // self.per_batch
        if self.per_epoch == 0:
            raise ClifError(
                f"{self.label}: {self.task.num_samples()} training samples give no full batch of {self.per_batch} "
                f"(batch size {self.config.batch_size} × {self.world} process(es)); lower the batch size or add "
                "samples"
            )

    def check_weights(self, step: int) -> None:
        bad = _non_finite(self.named)
        if bad is not None:
            raise ClifError(
                f"{self.label}: the trainable weights ({bad}) became NaN or infinite at step {step}; the run stopped "
                f"and {_last_good(self.run)}. Lower the learning rate, keep gradient clipping on (max_grad_norm), "
                "use bf16 instead of fp16, or check the data")

    def save(self, step: int) -> None:
        """A checkpoint of `step` (the oldest beyond `keep_checkpoints` deleted) and the loss curve."""
        self.check_weights(step)
        if self.main:
            scaler = self.accelerator.scaler
            ckpt = Checkpoint(
                step=step,
                params={k: p.detach().cpu().clone() for k, p in self.named.items()},
                optimizer=self.optimizer.state_dict(),
                history=self.history,
                scaler=scaler.state_dict() if scaler is not None else None,
                extra={k: t.detach().cpu().clone() for k, t in (self.hooks.state() if self.hooks.state else {}).items()},
            )
            save_checkpoint(ckpt, self.run.checkpoints_dir / checkpoint_name(step))
            for _step, path in self.run.checkpoints()[: -self.config.keep_checkpoints]:
                path.unlink(missing_ok=True)
            write_loss_csv(self.history, self.run.loss_csv)
            save_loss_png([(self.label, self.history)], self.run.loss_png)
        self.last_saved = step

    def train(self) -> None:
        """The steps from the current one to `config.steps`, with the task's modules in train mode meanwhile.
        A cancel (or the host's interrupt raised from the reporter) between steps keeps the finished ones."""
        config, modules = self.config, self.task.modules()
        was_training = [m.training for m in modules]
        if config.gradient_checkpointing:
            _set_gradient_checkpointing(modules, True)
        for m in modules:
            m.train()
        self.reporter.log(
            f"{self.label}: {config.steps} steps, batch {config.batch_size} × {config.grad_accum} accumulation × "
            f"{self.world} process(es), {self.accelerator.mixed_precision} precision, {self.optimizer_name}, "
            f"{sum(p.numel() for p in self.params):,} trainable values"
        )
        fork_devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=fork_devices):
                self.reporter.progress(self.step, config.steps, None)
                while self.step < config.steps:
                    self.train_step()
        except BaseException:
            if self.between_steps and self.step > self.last_saved and _non_finite(self.named) is None:
                self.save(self.step)
                self.reporter.log(
                    f"{self.label}: stopped after step {self.step}; checkpoint saved, running again resumes here")
            raise
        finally:
            for m, mode in zip(modules, was_training):
                m.train(mode)
            if config.gradient_checkpointing:
                _set_gradient_checkpointing(modules, False)
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.params:
                p.requires_grad_(False)

    def train_step(self) -> None:
        """One optimizer step: the learning rate, the accumulated micro-steps, the update, then the bookkeeping."""
        config, hooks = self.config, self.hooks
        factor = hooks.lr_factor(self.step) if hooks.lr_factor else warmup_factor(self.step, config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        micro_losses = [self.micro_step(a) for a in range(config.grad_accum)]
        value = self.mean_loss(micro_losses)
        if self.world > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(self.accelerator.reduce(p.grad, "mean"))
        if config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if hooks.after_update is not None:
            hooks.after_update()
        self.step += 1
        self.history.append((self.step, value, self.optimizer.param_groups[0]["lr"]))
        self.between_steps = True
        self.after_step(value)

    def micro_step(self, a: int) -> torch.Tensor:
        """Micro-step `a` of the current step: its own seed and batch, the loss and its backward pass."""
        config, accelerator = self.config, self.accelerator
        stop = self.reporter.should_stop()
        if self.world > 1:  # every process stops at the same micro-step, or collectives would hang
            stop = bool(accelerator.reduce(torch.tensor(float(stop), device=self.device), "max").item())
        if stop:
            raise Cancelled(f"{self.label} stopped on request after {self.step} steps; nothing final was written")
        self.between_steps = False
        micro = self.step * config.grad_accum + a
        torch.manual_seed(_micro_seed(config.seed, micro, self.rank))
        order = self.orders.get(micro // self.per_epoch)
        at = (micro % self.per_epoch) * self.per_batch + self.rank * config.batch_size
        batch = self.task.load_batch(order[at : at + config.batch_size])
        with accelerator.autocast():
            loss = self.task.loss(batch)
        value = loss.detach().float()
        accelerator.backward(loss / config.grad_accum)
        return value

    def mean_loss(self, micro_losses: list[torch.Tensor]) -> float:
        """The step's loss (over micro-steps and processes); a loss that is not finite stops the run."""
        mean_loss = torch.stack(micro_losses).mean()
        if self.world > 1:
            mean_loss = self.accelerator.reduce(mean_loss, "mean")
        value = float(mean_loss.item())
        if not math.isfinite(value):
            raise ClifError(
                f"{self.label}: the loss became {value} at step {self.step + 1}; the run stopped and "
                f"{_last_good(self.run)}. Lower the learning rate, use bf16 instead of fp16, or check the data"
            )
        return value

    def after_step(self, value: float) -> None:
        """Weight check, checkpoint, log line, preview and progress after a finished step."""
        config, step = self.config, self.step
        if step % WEIGHT_CHECK_EVERY == 0:
            self.check_weights(step)
        if step % config.checkpoint_every == 0 or step == config.steps:
            self.save(step)
            self.accelerator.wait_for_everyone()
        if config.log_every and (step % config.log_every == 0 or step == config.steps):
            self.reporter.log(f"{self.label}: step {step}/{config.steps} loss {value:.5f}")
        preview = None
        if self.main and config.preview_every and step % config.preview_every == 0:
            with torch.no_grad(), self.accelerator.autocast():
                preview = self.task.preview(step) or draw_loss_curve([(self.label, self.history)])
            with atomic_path(self.run.previews_dir / f"step-{step:06d}.png") as tmp:
                preview.save(tmp, format="PNG")
        self.reporter.progress(step, config.steps, preview)
