"""erase_concepts: one erasure run on the shared training loop, from targets to an erasure patch file.

1. check the targets and settings; encode every prompt once (text encoders stay frozen);
2. make the x_t pool (pool.py) or reuse the run folder's, which holds the frozen model's predictions, so
   no frozen UNet copy is kept in memory;
3. train the chosen weights (subsets.py) with the chosen objective (objectives.py) through
   `clif_core.training.loop.run_training`: checkpoints, resume, cancel, NaN stop, loss curve, previews of the
   erased prompts sampled with the current weights;
4. turn the change into a LoRA, put the base back exactly as it was, measure the patched model on fixed
   pool points (metrics.py) and write the patch (atomic) and metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.thumbnail import make_thumbnail
from clif_core.errors import ClifError
from clif_core.fileio import in_use
from clif_core.models.base import BaseModel
from clif_core.models.vae import decode_latents, native_resolution, vae_factor
from clif_core.progress import SILENT, Reporter
from clif_core.training.loop import ParamGroup, TrainResult, run_training, sub_reporter
from clif_core.training.precision import check_precision, make_accelerator
from clif_core.training.result import METRICS_FILE, RunResult
from clif_core.training.run_folder import RunFolder, base_recipe, recipe_differences

from . import objectives
from .conditioning import NULL, PromptTable, encode_prompts, mixed_autocast, unet_predict, unique_prompts
from .config import EraseConfig, unknown_target_warnings
from .latents import ddim_sample, grid, initial_noise
from .metrics import erasure_metrics
from .patch import weight_probe
from .pool import XtPool, build_pool, load_pool, pool_key, save_pool, seed_for
from .subsets import make_subset

POOL_FILE = "pool.safetensors"
PREVIEW_STEPS = 20
PREVIEW_CONCEPTS = 4


class EraseTask:
    """The TrainTask of an erasure run (see clif_core.training.loop.TrainTask)."""

    def __init__(self, base: BaseModel, config: EraseConfig, table: PromptTable, pool: XtPool,
                 params: dict[str, torch.nn.Parameter], resolution: int):
        self.base, self.config, self.table, self.pool = base, config, table, pool
        self._params = params
        self.resolution = resolution
        self.has_keep = bool((pool.keep >= 0).any()) and config.preserve_weight > 0

    def param_groups(self) -> list[ParamGroup]:
        # Weight decay would pull the base's own weights toward zero; a LoRA decays toward "no change".
        decay = None if self.config.subset == "lora" else 0.0
        return [ParamGroup("erase", self._params, self.config.learning_rate, weight_decay=decay)]

    def modules(self) -> list[torch.nn.Module]:
        return [self.base.unet]

    def num_samples(self) -> int:
        return len(self.pool)

    def epoch_order(self, epoch: int, seed: int, batch_size: int) -> list[int]:
        g = torch.Generator().manual_seed(seed_for(seed, -1, epoch))
        return torch.randperm(len(self.pool), generator=g).tolist()

    def load_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.base.device) for k, v in self.pool.select(indices).items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        n = batch["t"].shape[0]
        rows = [batch["target"]]
        if c.objective == "all-but-one":
            rows.append(torch.full_like(batch["target"], NULL))
        if self.has_keep:
            rows.append(batch["keep"])
        out = unet_predict(self.base, self.table, batch["x"].repeat(len(rows), 1, 1, 1),
                           batch["t"].repeat(len(rows)), torch.cat(rows)).split(n)
        if c.objective == "all-but-one":
            goal = objectives.target_guidance(batch["eps_null"], batch["eps_target"], batch["eps_alt"],
                                              batch["alt"] >= 0, c.eta, c.negative_eta)
            loss, _ = objectives.all_but_one_loss(out[0], out[1], batch["eps_null"], goal, c.lam)
        else:
            loss, _ = objectives.esd_loss(out[0], batch["eps_null"], batch["eps_target"], c.eta)
        if self.has_keep:
            loss = loss + objectives.preservation_loss(out[-1], batch["eps_keep"], c.preserve_weight)
        return loss

    def preview(self, step: int) -> Any:
        return preview_erased(self.base, self.table, self.config, self.resolution)


def preview_erased(base: BaseModel, table: PromptTable, config: EraseConfig, resolution: int) -> Any:
    """The erased prompts (up to 4) sampled with the model as it is now, from fixed noise, side by side."""
    targets = config.targets[:PREVIEW_CONCEPTS]
    noise = torch.cat([initial_noise(base, seed_for(config.loop.seed, -2, k), resolution)
                       for k in range(len(targets))])
    with torch.no_grad(), mixed_autocast(base):
        latents = ddim_sample(base, table, noise, [table.index(t.target) for t in targets],
                              min(PREVIEW_STEPS, config.sample_steps), config.guidance_scale)
        return grid(decode_latents(base, latents))


def run_recipe(base: BaseModel, config: EraseConfig, resolution: int) -> dict[str, Any]:
    return {
        "erase": {**config.to_dict(), "resolution": resolution},
        "base": base_recipe(base),
    }


def _pool_recipe(base: BaseModel, config: EraseConfig, resolution: int) -> dict[str, Any]:
    return {"targets": [t.describe() for t in config.targets], "preserve": list(config.preserve),
            "trajectories": config.trajectories, "sample_steps": config.sample_steps,
            "guidance_scale": config.guidance_scale, "resolution": resolution, "seed": config.loop.seed,
            "fingerprint": base.fingerprint}


def _title(config: EraseConfig) -> str:
    return "erase: " + ", ".join(t.describe().replace("->", "→") for t in config.targets)


def _check_replaceable(path: Path, recipe: dict[str, Any]) -> None:
    from clif_core.concepts.header import read_header

    if not path.exists():
        return
    meta = read_header(path).get("__metadata__") or {}
    try:
        earlier = json.loads(meta.get("clif.recipe", "null"))
    except ValueError:
        earlier = None
    if meta.get("clif.kind") != "erasure" or not isinstance(earlier, dict) or \
            recipe_differences(earlier, json.loads(json.dumps(recipe))):
        raise ClifError(f"{path} already exists and was not made by this run; choose another file name or allow "
                        "overwriting")


def erase_concepts(
    base: BaseModel,
    config: EraseConfig,
    run_dir: str | Path,
    out_path: str | Path,
    reporter: Reporter = SILENT,
    restart: bool = False,
    title: str = "",
    overwrite: bool = False,
) -> RunResult:
    """Erase `config.targets` from `base` and write the erasure patch to `out_path`.

    `run_dir` holds the run (run.json, x_t pool, checkpoints, loss curve, metrics.json); running again with
    the same settings resumes there, `restart` starts over. The base model is used in place and left exactly
    as it was. An existing file at `out_path` is replaced only with `overwrite` or when it is this run's own
    earlier patch (same recipe but for the step count). Raises ClifError for bad input, Cancelled when the
    reporter asks to stop (the finished steps are kept for resuming).
    """
    config.check()
    notes = _check_run(base, config, reporter)
    resolution = _resolution(base, config)
    accelerator = make_accelerator(config.loop, device=base.device)
    check_precision(base, accelerator.mixed_precision, doing="erasing")

    run = RunFolder(run_dir, outputs=(POOL_FILE, METRICS_FILE))
    with in_use(run.path, enabled=accelerator.is_main_process):
        recipe = run_recipe(base, config, resolution)
        if not overwrite:
            _check_replaceable(Path(out_path), recipe)
        run.open(recipe, restart=restart)
        total = config.progress_total
        total_pool = total - config.loop.steps

        prompts = unique_prompts([t.target for t in config.targets], [t.alternative for t in config.targets],
                                 config.preserve)
        table = encode_prompts(base, prompts, (resolution, resolution))
        pool = _pool(base, config, table, resolution, run, accelerator, sub_reporter(reporter, 0, total))
        with make_subset(base, config.subset, config.lora_rank, seed_for(config.loop.seed, -3)) as subset:
            task = EraseTask(base, config, table, pool, subset.params(), resolution)
            train = run_training(task, config.loop, run, accelerator, sub_reporter(reporter, total_pool, total),
                                 label="erasure")
            lora, patch_stats = subset.patch_lora(config.patch_tolerance, config.patch_max_rank)
        if not lora:
            raise ClifError("the erasure changed no weight (every delta is zero); raise the learning rate or the steps")
        patch = _patch(base, config, recipe, title, lora, patch_stats, train)
        with apply_concepts(base, [(patch, 1.0)], warn=lambda m: None):
            metrics = erasure_metrics(base, table, pool, config.eta, config.negative_eta)
            patch.thumbnail = make_thumbnail(preview_erased(base, table, config, resolution))
        metrics = {"final_loss": train.final_loss, **metrics,
                   "patch_max_relative_error": patch_stats["max_relative_error"]}
        result = RunResult(patch, Path(out_path), Path(run_dir), metrics, notes, train)
        result.write(run, accelerator)
        reporter.log("erase: " + result.report().replace("\n", "\n  "))
        return result


def _check_run(base: BaseModel, config: EraseConfig, reporter: Reporter) -> list[str]:
    """The run's warnings (targets the base may not know, alternatives ESD ignores), also logged."""
    notes = unknown_target_warnings(base, config.targets)
    if config.objective == "esd" and any(t.alternative for t in config.targets):
        notes.append("ESD's objective has no alternative concept: the alternatives are ignored by this method")
    for n in notes:
        reporter.log(f"erase: warning: {n}")
    return notes


def _resolution(base: BaseModel, config: EraseConfig) -> int:
    """The run's image side: the config's or the model's native one, a multiple of 8 × the VAE factor."""
    resolution = config.resolution or native_resolution(base)
    step = 8 * vae_factor(base)
    if resolution % step:
        raise ClifError(f"resolution {resolution} is not a multiple of {step}, which this model needs; use "
                        f"{max(step, resolution // step * step)}")
    return resolution


def _pool(base: BaseModel, config: EraseConfig, table: PromptTable, resolution: int, run: RunFolder,
          accelerator: Any, reporter: Reporter) -> XtPool:
    """The run folder's x_t pool when it was made with these settings, else a new one (saved for resuming)."""
    key = pool_key(_pool_recipe(base, config, resolution))
    pool = load_pool(run.output(POOL_FILE), key)
    if pool is None:
        reporter.log(f"erase: sampling {config.trajectories} trajectories × {config.sample_steps} steps per target")
        pool = build_pool(base, table, config.targets, config.preserve, config.trajectories, config.sample_steps,
                          config.guidance_scale, resolution, config.loop.seed, reporter)
        if accelerator.is_main_process:
            save_pool(pool, run.output(POOL_FILE), key)
    return pool


def _patch(base: BaseModel, config: EraseConfig, recipe: dict[str, Any], title: str, lora: dict[str, torch.Tensor],
           patch_stats: dict[str, Any], train: TrainResult) -> ConceptFile:
    """The erasure patch file: the LoRA, what it erases, how it was made and a probe of the weights it was made on."""
    return ConceptFile(
        concepts=[], base_family=base.family, encoder_widths={s.name: s.width for s in base.text},
        base_fingerprint=base.fingerprint, base_prediction_type=base.prediction_type, unet_lora=lora,
        recipe=recipe, title=title or _title(config), kind="erasure",
        metadata={
            "erased": [{"target": t.target, "alternative": t.alternative} for t in config.targets],
            "preserve": list(config.preserve), "method": config.method, "params": config.subset,
            "steps": train.steps, "patch": patch_stats,
            "unet_probe": weight_probe(base.unet, sorted({k.split(".", 1)[0] for k in lora})),
        },
    )
