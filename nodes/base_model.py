"""Load Base Model: one node for checkpoints and diffusers folders, for the CLIF and the native path."""

from __future__ import annotations

import os
from dataclasses import dataclass

from comfy_api.v0_0_2 import io

from .types import BaseModelType

_CHECKPOINT = "checkpoints/"
_DIFFUSERS = "diffusers/"


@dataclass(frozen=True)
class BaseModelRef:
    """What flows on a CLIF_BASE_MODEL socket: the file, loaded by the core only when a node needs it."""

    path: str

    def load(self):
        return _load_cached(self.path, os.path.getmtime(self.path))


_CACHE: dict = {}


def _load_cached(path: str, mtime: float):
    from clif_core.models.loader import load_base_model

    key = (path, mtime)
    if key not in _CACHE:
        _CACHE.clear()  # one base model in memory at a time
        _CACHE[key] = load_base_model(path)
    return _CACHE[key]


def base_model_choices() -> list[str]:
    import folder_paths

    from clif_core.models.bundled import SANDBOX_CHOICE, sandbox_available

    names = [SANDBOX_CHOICE] if sandbox_available() else []
    names += [_CHECKPOINT + n for n in folder_paths.get_filename_list("checkpoints")]
    for root in folder_paths.get_folder_paths("diffusers"):
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                if os.path.isfile(os.path.join(root, entry, "model_index.json")):
                    names.append(_DIFFUSERS + entry)
    return names


def resolve_base_model(choice: str) -> str:
    import folder_paths

    from clif_core.models.bundled import SANDBOX_CHOICE, SANDBOX_MODEL, sandbox_available

    if choice == SANDBOX_CHOICE and sandbox_available():
        return str(SANDBOX_MODEL)
    if choice.startswith(_CHECKPOINT):
        return folder_paths.get_full_path_or_raise("checkpoints", choice[len(_CHECKPOINT):])
    if choice.startswith(_DIFFUSERS):
        name = choice[len(_DIFFUSERS):]
        for root in folder_paths.get_folder_paths("diffusers"):
            if os.path.isfile(os.path.join(root, name, "model_index.json")):
                return os.path.join(root, name)
    raise FileNotFoundError(
        f"Base model {choice!r} not found: put a .safetensors checkpoint in models/checkpoints or a "
        "diffusers folder (with model_index.json) in models/diffusers, then refresh."
    )


class LoadBaseModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFLoadBaseModel",
            display_name="CLIF Load Base Model",
            category="CLIF/models",
            description="Loads an SD1.x, SD2.x or SDXL model (checkpoint or diffusers folder) for the CLIF "
            "nodes, and as MODEL/CLIP/VAE for ComfyUI's own nodes.",
            inputs=[io.Combo.Input("base_model", options=base_model_choices(),
                                   tooltip="a single-file checkpoint in models/checkpoints or a diffusers folder in "
                                   "models/diffusers")],
            outputs=[
                BaseModelType.Output(display_name="clif_base"),
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                io.Vae.Output(display_name="VAE"),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, base_model: str, **_) -> tuple:
        """Reload when the checkpoint (for a diffusers folder: its model_index.json) changed on disk."""
        try:
            path = resolve_base_model(base_model)
        except FileNotFoundError:
            return (base_model, None)
        stat = os.stat(path if os.path.isfile(path) else os.path.join(path, "model_index.json"))
        return (path, stat.st_mtime_ns, stat.st_size)

    @classmethod
    def execute(cls, base_model: str) -> io.NodeOutput:
        import folder_paths

        from .comfy_models import load_comfy_checkpoint

        path = resolve_base_model(base_model)
        model, clip, vae = load_comfy_checkpoint(path, folder_paths.get_folder_paths("embeddings"))
        return io.NodeOutput(BaseModelRef(path), model, clip, vae)


NODES = [LoadBaseModel]
