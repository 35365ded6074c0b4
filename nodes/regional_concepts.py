"""CLIF Apply Concepts (Regional): concept files isolated to regions on the native path, for the stock KSampler.

ComfyUI blends the noise predictions of masked conditioning entries by their masks (latent couple, see
docs/sampling.md). Each region's entry here carries its concept files' LoRAs as ComfyUI weight hooks
(`comfy_compat.with_lora_hook`): ComfyUI computes that entry's prediction with the LoRA on the model and the
others' without, so a LoRA reaches the image only through its region's mask. The region's prompt is encoded
by a CLIP with the files' text LoRA and concept tokens; the global prompt by a CLIP with the tokens only
(which it refuses: an isolated concept's tokens belong in its region's prompt).
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from .sampling import CONCEPT_SLOTS, MAX_REGIONS, layout_weights, masked_conditioning, regional_inputs
from .types import ConceptsType


class ApplyConceptsRegional(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from clif_core.validation import MAX_STRENGTH

        slots = []
        for i in range(1, CONCEPT_SLOTS + 1):
            slots += [
                ConceptsType.Input(f"concepts_{i}", optional=True,
                                   tooltip=f"a concept file isolated to region_{i}"),
                io.Int.Input(f"region_{i}", default=i, min=1, max=MAX_REGIONS, optional=True,
                             tooltip=f"the region concepts_{i} is isolated to (1 = the first region prompt)"),
                io.Float.Input(f"strength_{i}", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.05,
                               optional=True,
                               tooltip=f"LoRA strength of concepts_{i} (UNet and text encoder)"),
            ]
        return io.Schema(
            node_id="CLIFApplyConceptsRegional",
            display_name="CLIF Apply Concepts (Regional)",
            category="CLIF/concepts",
            description="Regional conditioning for the stock KSampler with each concept file isolated to one region: "
            "its LoRA acts only through that region's masked prediction (ComfyUI LoRA hooks) and its "
            "placeholders only in that region's prompt. Give the MODEL and CLIP without the concept files applied.",
            inputs=[*regional_inputs("the prompt for the whole image, without isolated placeholders"), *slots],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING")],
        )

    @classmethod
    def execute(cls, clip, global_prompt: str, layout: str, region_prompts: str, boxes: str,
                region_strength: float, region_masks=None, **slots) -> io.NodeOutput:
        import comfy.sd

        from clif_core.concepts.checks import validate
        from clif_core.errors import ClifError
        from clif_core.sample.isolation import check_bound_tokens
        from clif_core.validation import check_strength

        from .comfy_compat import with_lora_hook
        from .concept_patching import patch_clip_tokens

        regions, weights = layout_weights(layout, region_prompts, boxes, region_strength, region_masks)
        bound: dict[int, list[tuple[object, float]]] = {}
        for i in range(1, CONCEPT_SLOTS + 1):
            concepts = slots.get(f"concepts_{i}")
            if concepts is None:
                continue
            where = f"concepts_{i} ({concepts.display_title()!r})"
            validate(concepts, where)
            strength = check_strength(slots.get(f"strength_{i}", 1.0), f"strength_{i}")
            region = slots.get(f"region_{i}", i)
            if not 1 <= region <= len(regions):
                raise ClifError(f"{where} is isolated to region {region}, but the layout has regions 1 to "
                                f"{len(regions)}; set region_{i} to one of them or add a region prompt")
            bound.setdefault(region - 1, []).append((concepts, strength))
        names = [f"region {i} prompt" for i in range(1, len(regions) + 1)]
        check_bound_tokens({"global prompt": global_prompt, **{n: r.prompt for n, r in zip(names, regions)}},
                           {r: [c.token for cf, _ in uses for c in cf.concepts] for r, uses in bound.items()}, names)
        embeddings = {c.token: c.embeddings for uses in bound.values() for cf, _ in uses for c in cf.concepts}
        tokens_clip = patch_clip_tokens(clip, embeddings) if embeddings else clip

        conditioning = masked_conditioning(tokens_clip, global_prompt, weights[0]) if weights[0].any() else []
        for r, (region, weight) in enumerate(zip(regions, weights[1:])):
            if not weight.any():
                continue
            region_clip = clip
            for cf, strength in bound.get(r, []):
                if cf.text_lora and strength:
                    _, region_clip = comfy.sd.load_lora_for_models(None, region_clip, cf.text_lora, 0.0, strength)
            if embeddings:
                region_clip = patch_clip_tokens(region_clip, embeddings)
            entry = masked_conditioning(region_clip, region.prompt, weight)
            for cf, strength in bound.get(r, []):
                if cf.unet_lora and strength:
                    entry = with_lora_hook(entry, cf.unet_lora, strength)
            conditioning += entry
        return io.NodeOutput(conditioning)


NODES = [ApplyConceptsRegional]
