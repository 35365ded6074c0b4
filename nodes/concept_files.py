"""Concept files in ComfyUI: load, save, apply to MODEL/CLIP, export to stock embeddings + LoRA."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from .comfy_adapter import CONCEPTS_FOLDER, file_state, models_subdir, register_model_folders
from .types import ConceptsType


def _concept_file_choices() -> list[str]:
    import folder_paths

    register_model_folders()
    return folder_paths.get_filename_list(CONCEPTS_FOLDER)


def _checked_name(filename: str) -> str:
    name = os.path.basename(filename.strip())
    if not name or name in (".", "..") or name != filename.strip():
        raise ValueError(f"File name {filename!r} is not a plain file name: give a name like 'my_concepts'.")
    return name if name.endswith(".safetensors") else name + ".safetensors"


class LoadConceptFile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFLoadConceptFile",
            display_name="CLIF Load Concept File",
            category="CLIF/concepts",
            description="Loads a concept file (.safetensors) from models/clif_concepts.",
            inputs=[io.Combo.Input("concept_file", options=_concept_file_choices(),
                                   tooltip="a concept file in models/clif_concepts")],
            outputs=[ConceptsType.Output(display_name="concepts"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def fingerprint_inputs(cls, concept_file: str, **_) -> tuple:
        import folder_paths

        register_model_folders()
        return file_state(folder_paths.get_full_path(CONCEPTS_FOLDER, concept_file) or concept_file)

    @classmethod
    def execute(cls, concept_file: str) -> io.NodeOutput:
        import folder_paths

        from clif_core.concepts.files import load_concept_file

        register_model_folders()
        path = folder_paths.get_full_path_or_raise(CONCEPTS_FOLDER, concept_file)
        concepts = load_concept_file(path)
        return io.NodeOutput(concepts, concepts.summary())


class SaveConceptFile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFSaveConceptFile",
            display_name="CLIF Save Concept File",
            category="CLIF/concepts",
            description="Saves concepts to models/clif_concepts/<filename>.safetensors (atomic write).",
            is_output_node=True,
            inputs=[
                ConceptsType.Input("concepts", tooltip="a concept file (CLIF Load Concept File or a training node)"),
                io.String.Input("filename", default="my_concepts",
                                tooltip="models/clif_concepts/<filename>.safetensors"),
                io.Boolean.Input("overwrite", default=False, tooltip="replace an existing file of that name"),
            ],
            outputs=[io.String.Output(display_name="path")],
        )

    @classmethod
    def fingerprint_inputs(cls, filename: str, overwrite: bool, **_) -> tuple:
        register_model_folders()
        return file_state(os.path.join(models_subdir(CONCEPTS_FOLDER), _checked_name(filename))), overwrite

    @classmethod
    def execute(cls, concepts, filename: str, overwrite: bool) -> io.NodeOutput:
        from clif_core.concepts.files import save_concept_file
        from clif_core.validation import refuse_existing

        register_model_folders()
        path = os.path.join(models_subdir(CONCEPTS_FOLDER), _checked_name(filename))
        refuse_existing([path], overwrite, "enable 'overwrite'")
        save_concept_file(concepts, path)
        return io.NodeOutput(path, ui={"text": [path]})


class ApplyConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFApplyConcepts",
            display_name="CLIF Apply Concepts",
            category="CLIF/concepts",
            description="Patches ComfyUI's MODEL and CLIP with a concept file (LoRA + concept tokens) so the "
            "stock KSampler renders the concepts; write the placeholder (e.g. <alice>) in CLIPTextEncode.",
            inputs=[
                io.Model.Input("model", tooltip="the MODEL the concepts' UNet LoRA is applied to"),
                io.Clip.Input("clip", tooltip="the CLIP that learns the concept tokens (and gets the text LoRA)"),
                ConceptsType.Input("concepts", tooltip="a concept file (CLIF Load Concept File or a training node)"),
                io.Float.Input("strength_model", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="strength of the concept file's UNet LoRA on the MODEL (0: off)"),
                io.Float.Input("strength_clip", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="strength of the concept file's text-encoder LoRA on the CLIP (0: off)"),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.Clip.Output(display_name="CLIP")],
        )

    @classmethod
    def execute(cls, model, clip, concepts, strength_model: float, strength_clip: float) -> io.NodeOutput:
        from .concept_patching import apply_concept_file

        model, clip = apply_concept_file(model, clip, concepts, strength_model, strength_clip)
        return io.NodeOutput(model, clip)


class ExportConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFExportConcepts",
            display_name="CLIF Export Concepts (embeddings + LoRA)",
            category="CLIF/concepts",
            description="Writes one embedding per concept to models/embeddings (use as embedding:<name> in any "
            "CLIPTextEncode) and the LoRA to models/loras (use with the stock LoraLoader).",
            is_output_node=True,
            inputs=[
                ConceptsType.Input("concepts", tooltip="a concept file (CLIF Load Concept File or a training node)"),
                io.String.Input("name", default="my_concepts",
                                tooltip="name of the LoRA in models/loras; each concept's embedding is "
                                "models/embeddings/<token>"),
                io.Boolean.Input("overwrite", default=False, tooltip="replace existing files of those names"),
            ],
            outputs=[io.String.Output(display_name="files")],
        )

    @classmethod
    def fingerprint_inputs(cls, name: str, overwrite: bool, **_) -> tuple:
        return file_state(os.path.join(models_subdir("loras"), _checked_name(name))), overwrite

    @classmethod
    def execute(cls, concepts, name: str, overwrite: bool) -> io.NodeOutput:
        from clif_core.concepts.exports import export_comfy

        stem = _checked_name(name)[: -len(".safetensors")]
        written = export_comfy(
            concepts, models_subdir("embeddings"), models_subdir("loras"), stem, overwrite=overwrite
        )
        listing = "\n".join(str(p) for p in written)
        return io.NodeOutput(listing, ui={"text": [listing]})


NODES = [LoadConceptFile, SaveConceptFile, ApplyConcepts, ExportConcepts]
