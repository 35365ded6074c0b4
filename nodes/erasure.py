"""Concept erasure in ComfyUI: Erase Concepts, Load / Apply Erasure Patch, Purify Image.

An erasure patch travels on the CLIF_CONCEPTS socket (it is a concept file of kind "erasure"), so the
concept nodes (Save, Export for the stock LoraLoader) and the samplers take it as well. Patches are kept in
models/clif_erasure (patches made before it existed, in models/clif_concepts, still load); runs in
output/clif_runs/<run name>.
"""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from .comfy_adapter import CONCEPTS_FOLDER, ERASURE_FOLDER, file_state, models_subdir, register_model_folders
from .types import BaseModelType, ConceptsType
from .widgets import settings, widgets

_OPTIONAL = {"learning_rate": "lr", "eta": "eta", "uncond_weight": "lam", "trajectories": "trajectories",
             "sample_steps": "sample_steps", "resolution": "resolution", "batch_size": "loop.batch_size",
             "seed": "loop.seed", "preview_every": "loop.preview_every"}
"""Erase Concepts' optional inputs → EraseConfig settings (clif_core.options.ERASE)."""

_KIND_CACHE: dict = {}
_PATCH_TIP = "an erasure patch (CLIF Erase Concepts or Load Erasure Patch)"


def _plain_name(value: str, what: str, suffix: str = "") -> str:
    name = value.strip()
    if not name or name in (".", "..") or os.path.basename(name) != name:
        raise ValueError(f"{what} {value!r} is not a plain name: give a name like 'no_pigs' (no folders).")
    return name if not suffix or name.endswith(suffix) else name + suffix


def _is_patch(path: str) -> bool:
    """Whether a file in models/clif_concepts is an erasure patch (its header says so; cached by mtime)."""
    from clif_core.concepts.header import read_header
    from clif_core.errors import ClifError

    state = file_state(path)
    if state not in _KIND_CACHE:
        try:
            meta = read_header(path).get("__metadata__") or {}
            _KIND_CACHE[state] = meta.get("clif.kind") == "erasure"
        except ClifError:
            _KIND_CACHE[state] = False
    return _KIND_CACHE[state]


def _legacy_patches() -> list[str]:
    """Erasure patches saved into models/clif_concepts before patches had their own folder."""
    import folder_paths

    return [name for name in folder_paths.get_filename_list(CONCEPTS_FOLDER)
            if _is_patch(folder_paths.get_full_path(CONCEPTS_FOLDER, name) or "")]


def _patch_choices() -> list[str]:
    import folder_paths

    register_model_folders()
    own = folder_paths.get_filename_list(ERASURE_FOLDER)
    return [*own, *(name for name in _legacy_patches() if name not in own)]


def _patch_path(name: str) -> str | None:
    """models/clif_erasure/<name>, else an erasure patch of that name in models/clif_concepts."""
    import folder_paths

    register_model_folders()
    found = folder_paths.get_full_path(ERASURE_FOLDER, name)
    if found is None and name in _legacy_patches():
        found = folder_paths.get_full_path(CONCEPTS_FOLDER, name)
    return found


class EraseConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from clif_core.options import ERASE

        return io.Schema(
            node_id="CLIFEraseConcepts",
            display_name="CLIF Erase Concepts",
            category="CLIF/erase",
            description="Erases concepts from the base model into an erasure patch (models/clif_erasure). "
            "One concept per line; 'pig -> cow' steers it to an alternative. All-but-One keeps the rest of "
            "the model as it was; ESD is the baseline. Shows samples of the erased prompts while training; "
            "cancel keeps the finished steps and running again resumes (output/clif_runs/<run_name>).",
            is_output_node=True,
            inputs=[
                BaseModelType.Input("clif_base", tooltip="the base model (CLIF Load Base Model)"),
                io.String.Input("targets", multiline=True, default="van gogh\npig -> cow",
                                tooltip="concepts to erase, one per line; 'pig -> cow' steers a concept to an "
                                "alternative"),
                io.String.Input("preserve", multiline=True, default="",
                                tooltip="prompts whose images must stay as they are, one per line"),
                *widgets(ERASE, {"method": "method", "params": "params", "steps": "loop.steps"}),
                io.String.Input("filename", default="erased", tooltip="models/clif_erasure/<filename>.safetensors"),
                io.String.Input("run_name", default="erase",
                                tooltip="output/clif_runs/<run_name>: queue again to resume an interrupted run"),
                io.Boolean.Input("restart", default=False, tooltip="start over instead of resuming the run"),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="replace a file of that name made by another run"),
                *widgets(ERASE, _OPTIONAL, optional=True),
            ],
            outputs=[
                ConceptsType.Output(display_name="erasure_patch"),
                io.String.Output(display_name="path"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, clif_base, targets: str, preserve: str, filename: str, run_name: str, restart: bool,
                overwrite: bool, **inputs) -> io.NodeOutput:
        from clif_core.erase.config import EraseConfig, parse_targets
        from clif_core.erase.trainer import erase_concepts
        from clif_core.options import configure

        from .comfy_adapter import run_dir, train_with

        register_model_folders()
        path = os.path.join(models_subdir(ERASURE_FOLDER), _plain_name(filename, "filename", ".safetensors"))
        folder = run_dir(run_name, example="no_pigs")
        config = configure(EraseConfig(
            targets=parse_targets(targets), preserve=[p.strip() for p in preserve.splitlines() if p.strip()],
        ), settings({"method": "method", "params": "params", "steps": "loop.steps", **_OPTIONAL}, inputs))
        config.check()
        result = train_with(clif_base, config.progress_total, lambda base, rep: erase_concepts(
            base, config, folder, path, reporter=rep, restart=restart, overwrite=overwrite))
        report = result.report()
        return io.NodeOutput(result.file, str(result.path), report, ui={"text": [report]})


class LoadErasurePatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFLoadErasurePatch",
            display_name="CLIF Load Erasure Patch",
            category="CLIF/erase",
            description="Loads an erasure patch from models/clif_erasure (older patches saved in "
            "models/clif_concepts are listed too).",
            inputs=[io.Combo.Input("patch", options=_patch_choices(),
                                   tooltip="an erasure patch in models/clif_erasure (or an older one in "
                                   "models/clif_concepts)")],
            outputs=[ConceptsType.Output(display_name="erasure_patch"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def fingerprint_inputs(cls, patch: str, **_) -> tuple:
        return file_state(_patch_path(patch) or patch)

    @classmethod
    def execute(cls, patch: str) -> io.NodeOutput:
        from clif_core.erase.patch import load_erasure_patch
        from clif_core.errors import ClifError

        path = _patch_path(patch)
        if path is None:
            raise ClifError(f"Erasure patch {patch!r} is not in models/{ERASURE_FOLDER} (nor an erasure patch in "
                            f"models/{CONCEPTS_FOLDER}): put the file there or pick one from the list.")
        loaded = load_erasure_patch(path)
        return io.NodeOutput(loaded, loaded.summary())


def comfy_unet_weights(model, modules: list[str]) -> dict:
    """kohya module → the MODEL's own weight (without any patches applied to it), for the probe check."""
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = model.get_key_patches("diffusion_model.")
    return {m: patches[key_map[m]][0][0] for m in modules if key_map.get(m) in patches}


class ApplyErasurePatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFApplyErasurePatch",
            display_name="CLIF Apply Erasure Patch",
            category="CLIF/erase",
            description="Applies an erasure patch to a MODEL (ComfyUI's LoRA patching: the input MODEL is left "
            "as it is). Refuses a patch made for other weights unless 'allow_other_base' is on.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL to erase the concepts from"),
                ConceptsType.Input("erasure_patch", tooltip=_PATCH_TIP),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="strength of the patch (1: as trained, 0: off, negative: the opposite "
                               "direction)"),
                io.Boolean.Input("allow_other_base", default=False,
                                 tooltip="apply a patch made for other base weights anyway"),
            ],
            outputs=[io.Model.Output(display_name="MODEL")],
        )

    @classmethod
    def execute(cls, model, erasure_patch, strength: float, allow_other_base: bool) -> io.NodeOutput:
        import comfy.sd

        from clif_core.erase.patch import check_is_patch, probe_mismatch
        from clif_core.validation import check_strength

        check_is_patch(erasure_patch, f"erasure patch {erasure_patch.display_title()!r}")
        check_strength(strength, f"strength of erasure patch {erasure_patch.display_title()!r}")
        probe = erasure_patch.metadata.get("unet_probe") or {}
        problem = probe_mismatch(erasure_patch, comfy_unet_weights(model, list(probe)))
        if problem is not None:
            message = (f"erasure patch {erasure_patch.display_title()!r} was made for another base model "
                       f"({problem}; it was made on {erasure_patch.base_fingerprint[:12] or 'an unknown base'})")
            if not allow_other_base:
                raise ValueError(f"{message}. Erase again on this model, or enable 'allow_other_base'.")
            print(f"[CLIF] {message}; applied anyway as asked")
        if strength == 0:
            return io.NodeOutput(model)
        patched, _ = comfy.sd.load_lora_for_models(model, None, erasure_patch.unet_lora, strength, 0.0)
        return io.NodeOutput(patched)


class PurifyImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFPurifyImage",
            display_name="CLIF Purify Image",
            category="CLIF/erase",
            description="Removes the erased concepts from real images: DDIM inversion with the original model, "
            "regeneration with the erased one. Keeps the layout and the image size.",
            inputs=[
                BaseModelType.Input("clif_base", tooltip="the base model (CLIF Load Base Model)"),
                ConceptsType.Input("erasure_patch", tooltip=_PATCH_TIP),
                io.Image.Input("image", tooltip="the pictures to purify"),
                io.String.Input("prompt", default="", tooltip="empty: the patch's erased targets"),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps of the inversion and of the regeneration"),
                io.Float.Input("strength", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="how far to invert: 1 = all the way to noise"),
                io.Float.Input("guidance_scale", default=1.0, min=1.0, max=30.0, step=0.1,
                               tooltip="classifier-free guidance of the regeneration (1: none)"),
                io.Boolean.Input("allow_other_base", default=False,
                                 tooltip="use a patch made for other base weights anyway"),
            ],
            outputs=[io.Image.Output(display_name="IMAGE")],
        )

    @classmethod
    def execute(cls, clif_base, erasure_patch, image, prompt: str, steps: int, strength: float,
                guidance_scale: float, allow_other_base: bool) -> io.NodeOutput:
        from clif_core.erase.purify import purify

        from .comfy_adapter import free_comfy_memory, image_to_pil, pil_to_image, reporter

        free_comfy_memory()
        base = clif_base.load()
        pils = image_to_pil(image)
        out = []
        for pil in pils:
            out.append(purify(base, erasure_patch, pil, prompt=prompt or None, steps=steps, strength=strength,
                              guidance_scale=guidance_scale, allow_other_base=allow_other_base,
                              reporter=reporter(2 * max(1, round(strength * steps)))))
        return io.NodeOutput(pil_to_image(out))


NODES = [EraseConcepts, LoadErasurePatch, ApplyErasurePatch, PurifyImage]
