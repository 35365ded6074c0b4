"""The pretraining's work folder: where it stands, and the weights of the stages it has finished.

    WORK/checkpoint/progress.json      the stage in progress, seconds, losses, schedule changes (PretrainState)
    WORK/checkpoint/<module>.safetensors  vae, text, vision, unet, unet_ema: as each stage finished
    WORK/<stage>/                      the stage's run folder (the shared training loop's checkpoints, loss curve)

`checkpoint/` is replaced as a whole at the end of each stage (never half-written); `progress.json` alone is
rewritten when a stage stops part-way. The step a stage has reached is its run folder's latest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch

from clif_core.errors import ClifError
from clif_core.fileio import atomic_dir, save_safetensors_atomic, write_text_atomic
from clif_core.sandbox.model_arch import SandboxArch, build_text_encoder, build_unet, build_vae, build_vision_tower
from clif_core.sandbox.pretrain_config import STAGES, PretrainConfig, config_from_json
from clif_core.training.run_folder import RunFolder

CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"
_INIT_SEEDS = {"vae": 11, "text": 23, "vision": 37, "unet": 41}


@dataclass
class PretrainState:
    """What `progress.json` holds: where training stands (`step` is read from the stage's run folder)."""

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


def fresh_module(name: str, arch: SandboxArch, seed: int) -> torch.nn.Module:
    """A module as the pretraining initialises it (its own seed, so every stage starts the same)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + _INIT_SEEDS[name])
        return {"vae": build_vae, "text": build_text_encoder, "vision": build_vision_tower, "unet": build_unet}[name](arch)


def stage_run(work: Path, stage: str) -> RunFolder:
    return RunFolder(work / stage)


def _token_key(state: dict[str, torch.Tensor]) -> str:
    return next(k for k in state if k.endswith("token_embedding.weight"))


def _tensors_to_save(name: str, module: torch.nn.Module, cfg: PretrainConfig, extra: dict) -> dict[str, torch.Tensor]:
    state = {k: v.detach().to("cpu", torch.float32) for k, v in module.state_dict().items() if v.is_floating_point()}
    if name == "text":  # rows of tokens the world never uses stay at their initial values: store only the others
        key = _token_key(state)
        init = fresh_module("text", cfg.arch, cfg.seed).state_dict()[key]
        rows = torch.nonzero((state[key] != init).any(dim=1)).flatten()
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
        table = fresh_module("text", cfg.arch, cfg.seed).state_dict()[key].clone()
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
        if (candidate / PROGRESS).is_file():
            return candidate
    return None


def load_state(work: Union[str, Path]) -> Optional[PretrainState]:
    """The work folder's state, or None for a new folder; a damaged record is a ClifError with the fix."""
    work = Path(work)
    folder = _checkpoint_dir(work)
    if folder is None:
        return None
    path = folder / PROGRESS
    try:
        state = PretrainState(**json.loads(path.read_text(encoding="utf-8")))
        config_from_json(state.config)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ClifError(f"{path} is not a sandbox pretraining checkpoint's record ({type(err).__name__}: {err}); "
                        "restore it from the copy you committed, or start a new --work folder") from None
    if state.stage not in (*STAGES, "done"):
        raise ClifError(f"{path}: stage {state.stage!r} is not a stage of the pretraining; restore the file, or "
                        "start a new --work folder")
    if not state.done:
        found = stage_run(work, state.stage).checkpoints()
        state.step = found[-1][0] if found else 0
    return state


def write_progress(work: Path, state: PretrainState) -> None:
    """Rewrite the record alone (a stage stopped part-way: its weights are in its run folder)."""
    write_text_atomic(work / CHECKPOINT / PROGRESS, json.dumps(asdict(state), indent=1))


def write_checkpoint(
    work: Path,
    state: PretrainState,
    cfg: PretrainConfig,
    modules: dict[str, torch.nn.Module],
    extras: dict[str, dict[str, torch.Tensor]],
) -> None:
    """Write a complete checkpoint folder beside the old one, then swap it in (never a half-written state)."""
    with atomic_dir(work / CHECKPOINT) as new:
        for name, module in modules.items():
            tensors = _tensors_to_save(name, module, cfg, extras.get(name, {}))
            save_safetensors_atomic(tensors, new / f"{name}.safetensors")
        write_text_atomic(new / PROGRESS, json.dumps(asdict(state), indent=1))


def load_all(work: Path, cfg: PretrainConfig, device: torch.device) -> tuple[dict, dict]:
    """The finished stages' modules and their extra tensors (the vision tower's logit scale)."""
    folder = _checkpoint_dir(work)
    modules, extras = {}, {}
    for name in ("vae", "text", "vision", "unet", "unet_ema"):
        if folder is not None and (folder / f"{name}.safetensors").is_file():
            module = fresh_module("unet" if name == "unet_ema" else name, cfg.arch, cfg.seed)
            extras[name] = _load_module(name, module, folder, cfg)
            modules[name] = module.to(device)
    return modules, extras
