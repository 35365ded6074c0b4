"""A small regression task for the shared training loop, with its loop settings and a one-call `train`."""

from __future__ import annotations

import torch

from clif_core.progress import Reporter
from clif_core.training.loop import LoopConfig, ParamGroup, run_training
from clif_core.training.precision import make_accelerator
from clif_core.training.run_folder import RunFolder

N = 24


class ToyTask:
    """Noisy linear regression: uses the global random generator (like a diffusion loss's noise)."""

    def __init__(self, nan_from_call: int | None = None, crash_at_call: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.3
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.model = torch.nn.Linear(4, 1)
        self.model.requires_grad_(False)
        self.calls = 0
        self.nan_from_call = nan_from_call
        self.crash_at_call = crash_at_call

    def param_groups(self):
        return [ParamGroup("linear", dict(self.model.named_parameters()), lr=0.3)]

    def modules(self):
        return [self.model]

    def num_samples(self):
        return N

    def epoch_order(self, epoch, seed, batch_size):
        return torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()

    def load_batch(self, indices):
        return self.x[indices], self.y[indices]

    def loss(self, batch):
        self.calls += 1
        if self.crash_at_call is not None and self.calls == self.crash_at_call:
            raise RuntimeError("simulated crash in the middle of a step")
        x, y = batch
        noise = 0.05 * torch.randn_like(y)
        loss = ((self.model(x).squeeze(-1) - y - noise) ** 2).mean()
        if self.nan_from_call is not None and self.calls >= self.nan_from_call:
            loss = loss * float("nan")
        return loss

    def preview(self, step):
        return None


def config(**kw) -> LoopConfig:
    base = dict(steps=12, batch_size=4, checkpoint_every=3, keep_checkpoints=2, log_every=0, seed=5)
    base.update(kw)
    return LoopConfig(**base)


def train(task, cfg, folder, reporter=Reporter(log=lambda m: None), recipe=None):
    run = RunFolder(folder)
    run.open(recipe or {"task": "toy", "loop": cfg.to_dict()})
    return run_training(task, cfg, run, make_accelerator(cfg), reporter, label="toy")
