"""Where runs live and what front ends need to know about them: named run folders, loss curves, progress
totals, and loading a base model for training from a caller that runs in inference mode (ComfyUI)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from clif_core.errors import ClifError

RUNS_FOLDER = "clif_runs"
"""The folder of named runs under a front end's output folder (ComfyUI: output/clif_runs/<run name>)."""


def named_run_dir(output_dir: str | os.PathLike, run_name: str, what: str = "run_name",
                  example: str = "alice_bob") -> str:
    """output_dir/clif_runs/<run_name>; the name must be a plain folder name (no folders, not '.' or '..')."""
    name = run_name.strip()
    if not name or name in (".", "..") or os.path.basename(name) != name:
        raise ClifError(f"{what} {run_name!r} is not a plain name: give a name like {example!r} (no folders).")
    return os.path.join(os.fspath(output_dir), RUNS_FOLDER, name)


def loss_curves(run_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(title, loss.csv path) of a run folder, or of its stage folders (a run of both CLIF stages)."""
    from clif_core.train.both_stages import STAGE_DIRS

    run_dir = os.fspath(run_dir)
    title = os.path.basename(run_dir.rstrip(os.sep))
    if os.path.isfile(os.path.join(run_dir, "loss.csv")):
        return [(title, os.path.join(run_dir, "loss.csv"))]
    return [(f"{title} {s}", os.path.join(run_dir, s, "loss.csv"))
            for s in STAGE_DIRS if os.path.isfile(os.path.join(run_dir, s, "loss.csv"))]


def trainable_weights(base: Any) -> None:
    """A base model loaded in inference mode holds inference tensors, which autograd cannot save for backward
    (and whose version counters it cannot read). Give every such parameter and buffer an ordinary copy (same
    values; shared tensors stay shared) before training."""
    import torch

    copies: dict[int, torch.Tensor] = {}

    def ordinary(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            copy = t.clone()
            copies[id(t)] = torch.nn.Parameter(copy, requires_grad=t.requires_grad) \
                if isinstance(t, torch.nn.Parameter) else copy
        return copies[id(t)]

    with torch.inference_mode(False):
        for component in (base.unet, base.vae, *(s.encoder for s in base.text)):
            for module in component.modules():
                for table in (module._parameters, module._buffers):
                    for name, t in table.items():
                        if t is not None and t.is_inference():
                            table[name] = ordinary(t)


@contextmanager
def loaded_for_training(load: Callable[[], Any]) -> Iterator[Any]:
    """Gradients on (outside inference mode, which ComfyUI runs nodes in) and the base model from `load()`
    with ordinary, trainable tensors, for the body of the `with`."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        base = load()
        trainable_weights(base)
        yield base
