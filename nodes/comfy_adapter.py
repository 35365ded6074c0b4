"""The small layer between ComfyUI and clif_core: progress, cancel, images, model folders.

Everything ComfyUI-specific that several node modules need lives here, once.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import numpy as np
import torch

CONCEPTS_FOLDER = "clif_concepts"
ERASURE_FOLDER = "clif_erasure"  # erasure patches; older ones in clif_concepts still load
SAMS_FOLDER = "sams"
_MODEL_FOLDERS = {CONCEPTS_FOLDER: {".safetensors"}, ERASURE_FOLDER: {".safetensors"},
                  SAMS_FOLDER: {".pth", ".safetensors"}}
log = logging.getLogger("clif")


def register_model_folders() -> None:
    """Register models/clif_concepts, models/clif_erasure and models/sams with ComfyUI (idempotent).

    Paths other packs or extra_model_paths.yaml registered are kept; their extension sets are extended.
    """
    import folder_paths

    for name, extensions in _MODEL_FOLDERS.items():
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(extensions))
        elif isinstance(entry[1], set):
            entry[1].update(extensions)


def file_state(path: str) -> tuple:
    """What ComfyUI's cache compares between runs: a node re-runs when its file appeared, vanished or changed."""
    try:
        stat = os.stat(path)
    except OSError:
        return (path, None)
    return (path, stat.st_mtime_ns, stat.st_size)


def run_dir(run_name: str, what: str = "run_name", example: str = "alice_bob") -> str:
    """output/clif_runs/<run_name>: where a training or erasure run keeps its resumable state."""
    import folder_paths

    from clif_core.runs import named_run_dir

    return named_run_dir(folder_paths.get_output_directory(), run_name, what, example)


def models_subdir(folder_name: str) -> str:
    """The first (default) folder ComfyUI uses for `folder_name`, created if missing."""
    import folder_paths

    path = folder_paths.get_folder_paths(folder_name)[0]
    os.makedirs(path, exist_ok=True)
    return path


def reporter(total: int, preview_every: float = 0.5):
    """A clif_core Reporter bound to ComfyUI's progress bar, preview and interrupt button.

    At most one preview image per `preview_every` seconds reaches the UI: ComfyUI encodes previews on the
    event loop that also answers /interrupt, so a flood of previews would delay Cancel by seconds.
    Log lines go to ComfyUI's log through `logging`.
    """
    import comfy.model_management
    import comfy.utils

    from clif_core.progress import Reporter

    bar = comfy.utils.ProgressBar(total)
    last_preview = [float("-inf")]

    def progress(step: int, steps: int, preview=None) -> None:
        now = time.monotonic()
        if preview is not None and now - last_preview[0] >= preview_every:
            last_preview[0] = now
        else:
            preview = None
        bar.update_absolute(step, steps, ("PNG", preview, 512) if preview is not None else None)

    def should_stop() -> bool:
        # Raises ComfyUI's own InterruptProcessingException, so the run ends as "interrupted" in the UI
        # (not as an error); the core's finally-blocks remove any partial output on the way out.
        comfy.model_management.throw_exception_if_processing_interrupted()
        return False

    return Reporter(progress=progress, should_stop=should_stop, log=lambda m: log.info("[CLIF] %s", m))


def pil_to_image(images) -> torch.Tensor:
    """PIL image(s) → ComfyUI IMAGE (float32 [B,H,W,3] in 0..1)."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def image_to_pil(image: torch.Tensor, index: Optional[int] = None):
    """ComfyUI IMAGE → list of PIL images (or one, with `index`)."""
    from PIL import Image

    arrays = (image.detach().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    pils = [Image.fromarray(a) for a in arrays]
    return pils if index is None else pils[index]


def free_comfy_memory() -> None:
    """Unload ComfyUI's cached models before the pack loads its own large ones."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def train_with(clif_base, total: int, run):
    """Load the base model for training and return `run(base, reporter)`, the reporter counting to `total`.

    ComfyUI's cached models leave the device first; ComfyUI executes nodes in inference mode, so training
    steps out of it (clif_core.runs.loaded_for_training).
    """
    from clif_core.runs import loaded_for_training

    free_comfy_memory()
    with loaded_for_training(clif_base.load) as base:
        return run(base, reporter(total))
