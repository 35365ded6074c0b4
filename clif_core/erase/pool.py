"""The x_t pool: where the erasure objectives are evaluated, and the frozen model's predictions there.

For every erased prompt c_e, `trajectories` DDIM trajectories of the frozen model are sampled from seeded
noise under c_e with classifier-free guidance (`guidance_scale`, `sample_steps` steps). Every step's latent
x_t (from pure noise down to the last step) enters the pool with its timestep and the frozen predictions
the objectives need, taken in the same UNet batch that drives the trajectory:

    eps_null    ε*(x_t, ∅)          eps_target  ε*(x_t, c_e)
    eps_alt     ε*(x_t, c_alt)      (zeros and alt = -1 when the concept has no alternative)
    eps_keep    ε*(x_t, c_p)        one preservation prompt per entry, in turn (zeros, keep = -1 without any)

("ε" is the base's raw prediction: noise for epsilon models, v for v-prediction models.) The pool is made
once per run and kept in the run folder, so the trainer never needs a frozen copy of the UNet, a resumed
run continues on exactly the same x_t, and All-but-One and ESD can be compared on the same points.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from clif_core.errors import ClifError
from clif_core.fileio import save_safetensors_atomic
from clif_core.models.denoise import ddim_scheduler, denoise_step
from clif_core.progress import SILENT, Reporter

from .conditioning import NULL, PromptTable, batched, unet_predict
from .config import EraseTarget
from .latents import initial_noise

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

FORMAT = "clif.erase-pool"
GENERATION_ROWS = 16
"""Largest UNet batch while generating (rows = trajectories × prompts per trajectory)."""


@dataclass
class XtPool:
    """N pool entries; prompt indices refer to `prompts` (a PromptTable's order), -1 for none."""

    x: torch.Tensor  # [N, C, h, w] float32
    t: torch.Tensor  # [N] int64
    eps_null: torch.Tensor
    eps_target: torch.Tensor
    eps_alt: torch.Tensor
    eps_keep: torch.Tensor
    concept: torch.Tensor  # [N] which target (index into the run's targets)
    target: torch.Tensor  # [N] prompt index of c_e
    alt: torch.Tensor  # [N] prompt index of c_alt or -1
    keep: torch.Tensor  # [N] prompt index of the preservation prompt or -1
    prompts: list[str]

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "prompts"}

    def select(self, indices: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return {name: value[index] for name, value in self.tensors().items()}


def seed_for(seed: int, *parts: int) -> int:
    digest = hashlib.blake2b(f"clif-erase:{seed}:{':'.join(map(str, parts))}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@torch.no_grad()
def build_pool(
    base: BaseModel,
    table: PromptTable,
    targets: Sequence[EraseTarget],
    preserve: Sequence[str],
    trajectories: int,
    sample_steps: int,
    guidance_scale: float,
    resolution: int,
    seed: int,
    reporter: Reporter = SILENT,
) -> XtPool:
    """Sample the trajectories and collect the pool (see the module docstring). Stops between UNet calls
    when the reporter asks (Cancelled, nothing kept)."""
    scheduler = ddim_scheduler(base)
    scheduler.set_timesteps(sample_steps)
    timesteps = scheduler.timesteps.clone()
    keep_rows = [table.index(p) for p in preserve]
    parts: dict[str, list[torch.Tensor]] = {f.name: [] for f in fields(XtPool) if f.name != "prompts"}
    total = len(targets) * trajectories * sample_steps
    done = 0
    for k, target in enumerate(targets):
        c_e = table.index(target.target)
        c_alt = table.index(target.alternative) if target.alternative else -1
        per_traj = 2 + (c_alt >= 0) + bool(keep_rows)
        chunk = max(1, GENERATION_ROWS // per_traj)
        for span in batched(trajectories, chunk):
            js = list(range(span.start, span.stop))
            x = torch.cat([initial_noise(base, seed_for(seed, k, j), resolution) for j in js]).to(base.device)
            x = x * scheduler.init_noise_sigma
            for i, t in enumerate(timesteps):
                reporter.check_cancel()
                entry = [j * sample_steps + i for j in js]
                keep = [keep_rows[e % len(keep_rows)] for e in entry] if keep_rows else [-1] * len(js)
                rows = [NULL] * len(js) + [c_e] * len(js) + ([c_alt] * len(js) if c_alt >= 0 else []) + \
                    (keep if keep_rows else [])
                reps = len(rows) // len(js)
                n = len(js)
                calls: list[tuple[torch.Tensor, ...]] = []

                def model(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                    # one UNet call for every row of the trajectory (x_in is [x; x]); guidance takes the first two
                    calls.append(unet_predict(base, table, x_in[:n].repeat(reps, 1, 1, 1), t,
                                              torch.tensor(rows)).chunk(reps))
                    return torch.cat(calls[-1][:2])

                stepped = denoise_step(scheduler, model, x, t, guidance_scale)
                _record(parts, x, t, calls[-1], k, c_e, c_alt, keep, bool(keep_rows))
                x = stepped.prev_sample
                done += n
                reporter.progress(done, total, None)
    return XtPool(**{name: torch.cat(values) for name, values in parts.items()}, prompts=list(table.prompts))


def _record(parts: dict[str, list[torch.Tensor]], x: torch.Tensor, t: torch.Tensor, out: Sequence[torch.Tensor],
            k: int, c_e: int, c_alt: int, keep: list[int], has_keep: bool) -> None:
    """One step's pool entries: x_t, t, the frozen predictions (null, target, alternative, preserved) and the
    prompt indices of its rows (zeros and -1 where a trajectory has no alternative or nothing preserved)."""
    n = x.shape[0]
    zeros = torch.zeros_like(out[0])
    parts["x"].append(x.float().cpu())
    parts["t"].append(t.expand(n).to(torch.int64).cpu())
    parts["eps_null"].append(out[0].cpu())
    parts["eps_target"].append(out[1].cpu())
    parts["eps_alt"].append((out[2] if c_alt >= 0 else zeros).cpu())
    parts["eps_keep"].append((out[-1] if has_keep else zeros).cpu())
    parts["concept"].append(torch.full((n,), k, dtype=torch.int64))
    parts["target"].append(torch.full((n,), c_e, dtype=torch.int64))
    parts["alt"].append(torch.full((n,), c_alt, dtype=torch.int64))
    parts["keep"].append(torch.tensor(keep, dtype=torch.int64))


def pool_key(recipe: dict[str, Any]) -> str:
    """Identifies what a pool was made from (the run recipe's pool-relevant part)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def save_pool(pool: XtPool, path: Path, key: str) -> Path:
    return save_safetensors_atomic(pool.tensors(), path, {
        "clif.format": FORMAT, "key": key, "prompts": json.dumps(pool.prompts, ensure_ascii=False)})


def load_pool(path: Path, key: str) -> Optional[XtPool]:
    """The pool saved at `path` when it was made from the same recipe (`key`), else None."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("clif.format") != FORMAT or meta.get("key") != key:
                return None
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return XtPool(**tensors, prompts=json.loads(meta["prompts"]))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise ClifError(f"the x_t pool {path} cannot be read ({err}); delete it (it is made again) or restart the run") from err
