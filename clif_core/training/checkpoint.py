"""Training checkpoints: one safetensors file per checkpoint, never a pickle.

A checkpoint holds everything a resumed run needs to continue bit-identically: the trainable tensors, the
optimizer state (tensors as tensors, the rest as JSON metadata), the gradient scaler's state (fp16), the
loss history and any state the trainer keeps beside its weights (`LoopHooks.state`, e.g. an EMA). Random numbers and the data order are functions of (seed, step) in the loop, so the step
number is their whole state.

    step-000050.safetensors
        param.<group>/<name>        trainable tensors
        optim.<id>.<key>            optimizer state tensors (exp_avg, exp_avg_sq, step, ...)
        extra.<name>                the trainer's own state tensors
        history                     float64 [n, 3]: step, loss, learning rate of the first group
        metadata: clif.format, step, params (names in optimizer order), optimizer (JSON), scaler (JSON),
                  extra (names)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from clif_core.errors import ClifError
from clif_core.fileio import save_safetensors_atomic

FORMAT = "clif.train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d{6,})\.safetensors$")


@dataclass
class Checkpoint:
    """The state of a run after `step` optimizer steps."""

    step: int
    params: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # an optimizer state_dict
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, lr)
    scaler: Optional[dict[str, Any]] = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}.safetensors"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in state_dict["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    meta = {"param_groups": state_dict["param_groups"], "scalars": scalars,
            "ids": [int(pid) for pid in state_dict["state"]]}
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {pid: dict(meta["scalars"].get(str(pid), {})) for pid in meta["ids"]}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state[int(pid)][name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Write `ckpt` atomically to `path`."""
    tensors = {f"param.{name}": t for name, t in ckpt.params.items()}
    optim_tensors, optim_meta = _flatten_optimizer(ckpt.optimizer)
    tensors.update(optim_tensors)
    tensors.update({f"extra.{name}": t for name, t in ckpt.extra.items()})
    tensors["history"] = torch.tensor(ckpt.history, dtype=torch.float64).reshape(-1, 3)
    metadata = {
        "clif.format": FORMAT,
        "clif.version": str(VERSION),
        "step": str(ckpt.step),
        "params": json.dumps(list(ckpt.params)),
        "optimizer": json.dumps(optim_meta, allow_nan=False),
        "scaler": json.dumps(ckpt.scaler),
        "extra": json.dumps(list(ckpt.extra)),
    }
    return save_safetensors_atomic(tensors, path, metadata)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; a damaged file is a ClifError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("clif.format") != FORMAT:
                raise ClifError(f"{path} is not a CLIF training checkpoint; remove it from the run folder")
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        names = json.loads(meta["params"])
        optimizer = json.loads(meta["optimizer"])
        scaler = json.loads(meta["scaler"])
        step = int(meta["step"])
        extra_names = json.loads(meta.get("extra", "[]"))
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise ClifError(
            f"checkpoint {path} cannot be read ({err}); delete it to resume from the one before, or restart the run"
        ) from None
    params = {name: tensors.pop(f"param.{name}") for name in names}
    extra = {name: tensors.pop(f"extra.{name}") for name in extra_names}
    history = [(int(s), float(loss), float(lr)) for s, loss, lr in tensors.pop("history").tolist()]
    return Checkpoint(step=step, params=params, optimizer=_unflatten_optimizer(tensors, optimizer),
                      history=history, scaler=scaler, extra=extra)
