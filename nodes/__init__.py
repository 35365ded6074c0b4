"""ComfyUI wrappers of the pack: one module per stage, each listing its node classes in NODES."""

from comfy_api.v0_0_2 import ComfyExtension, io

from . import augment, base_model, concept_files, erasure, latents, regional_concepts, sampling, training


class ClifExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .bundled_examples import install_into_comfy_input
        from .comfy_adapter import register_model_folders

        register_model_folders()
        install_into_comfy_input()
        return [*base_model.NODES, *concept_files.NODES, *augment.NODES, *sampling.NODES, *regional_concepts.NODES,
                *latents.NODES, *training.NODES, *erasure.NODES]


async def comfy_entrypoint() -> ComfyExtension:
    return ClifExtension()
