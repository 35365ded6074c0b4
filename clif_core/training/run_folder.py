"""A run folder: where one training run keeps its recipe, checkpoints, loss curve and outputs.

    RUN/run.json                 the recipe the run was started with (what must match to resume)
    RUN/checkpoints/step-*.safetensors
    RUN/loss.csv, RUN/loss.png
    RUN/previews/step-*.png      previews, when asked for
    RUN/<the stage's outputs>    written atomically at the end

Running again into the same folder resumes from the latest checkpoint when the recipe matches; settings
that do not change what is trained (the number of steps, how often to checkpoint, preview or log, what the
previews show) may differ. Anything else is refused with the differing settings named, so a changed setting
never silently continues an old run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from clif_core.errors import ClifError
from clif_core.fileio import write_text_atomic
from clif_core.validation import field_of, read_json

from .checkpoint import list_checkpoints

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

FORMAT = "clif.train-run"
VERSION = 1
RESUMABLE = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "preview_every", "log_every",
                       "preview_steps", "preview_prompt"})
"""Settings that may change between a run and its resumption (leaf names, at any depth): none changes what is
trained (the previews' settings change the previews and stage 2's thumbnail only)."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def base_recipe(base: BaseModel) -> dict[str, Any]:
    """What of the base model a run's recipe holds (a run resumes only on the same weights, dtype included)."""
    return {"family": base.family, "fingerprint": base.fingerprint, "prediction_type": base.prediction_type,
            "dtype": str(base.dtype).removeprefix("torch.")}


def recipe_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ, ignoring the resumable ones."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if k.rsplit(".", 1)[-1] not in RESUMABLE and a.get(k) != b.get(k))


class RunFolder:
    """One run's folder. `outputs` are the file names of the stage's final outputs (removed on restart)."""

    def __init__(self, path: str | Path, outputs: Iterable[str] = ()):
        self.path = Path(path)
        self.outputs = tuple(outputs)

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def loss_csv(self) -> Path:
        return self.path / "loss.csv"

    @property
    def loss_png(self) -> Path:
        return self.path / "loss.png"

    @property
    def previews_dir(self) -> Path:
        return self.path / "previews"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    def output(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self) -> list[tuple[int, Path]]:
        return list_checkpoints(self.checkpoints_dir)

    def latest_checkpoint(self, max_step: int) -> Optional[tuple[int, Path]]:
        """The newest checkpoint at or before `max_step`; ClifError if the run is already past it."""
        found = self.checkpoints()
        if not found:
            return None
        usable = [c for c in found if c[0] <= max_step]
        if not usable:
            raise ClifError(
                f"run folder {self.path} already holds {found[-1][0]} steps, more than the {max_step} asked for; "
                "ask for at least that many steps, or restart the run (or use another run name)"
            )
        return usable[-1]

    def recipe(self) -> Optional[dict[str, Any]]:
        if not self.run_file.is_file():
            return None
        data = read_json(self.run_file, dict, "restart the run or use another run folder")
        if data.get("format") != FORMAT:
            raise ClifError(f"{self.run_file} is not a CLIF run file; use another run folder")
        return field_of(data, "recipe", dict, str(self.run_file))

    def open(self, recipe: Mapping[str, Any], restart: bool = False) -> bool:
        """Prepare the folder for a run of `recipe`; True when earlier progress will be resumed.

        With `restart`, this run's earlier checkpoints, curve and outputs are removed first (other files in
        the folder are left alone).
        """
        recipe = json.loads(json.dumps(recipe, sort_keys=True, allow_nan=False))  # as it reads back from run.json
        if restart:
            self.clear()
        old = self.recipe()
        if old is not None:
            changed = recipe_differences(old, recipe)
            if changed:
                shown = ", ".join(f"{k} ({_flatten(old).get(k)!r} → {_flatten(recipe).get(k)!r})" for k in changed[:6])
                raise ClifError(
                    f"run folder {self.path} was started with other settings: {shown}. Resume with the same "
                    "settings, restart the run, or choose another run name"
                )
        elif self.checkpoints():
            raise ClifError(
                f"run folder {self.path} has checkpoints but no run.json; restart the run or use another folder")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_file, json.dumps(
            {"format": FORMAT, "version": VERSION, "recipe": recipe}, indent=1, sort_keys=True, allow_nan=False))
        return bool(self.checkpoints())

    def clear(self) -> None:
        """Remove this run's own files (checkpoints, previews, curve, run.json, outputs)."""
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        shutil.rmtree(self.previews_dir, ignore_errors=True)
        for path in (self.loss_csv, self.loss_png, self.run_file, *(self.output(n) for n in self.outputs)):
            path.unlink(missing_ok=True)


def open_run(run: RunFolder, recipe: dict[str, Any], restart: bool, accelerator: Any) -> None:
    """Open the run folder on the main process (the others wait), so only one process writes it."""
    if accelerator.is_main_process:
        run.open(recipe, restart=restart)
    accelerator.wait_for_everyone()
