"""CLIF/sample nodes: the core sampler, regional conditioning for the stock KSampler, saving with the recipe."""

from __future__ import annotations

import json

from comfy_api.v0_0_2 import io

from .types import BaseModelType, ConceptsType

CONCEPT_SLOTS = 3
REGION_OFF = "off"
PLACEMENTS = ["boxes", "masks"]
MAX_REGIONS = 16
"""Highest region number a concept slot can be isolated to (a layout with more regions is refused there)."""
MASK_RASTER = 256
"""Side of the masks Regional Conditioning rasterises boxes at; ComfyUI resizes them to the latent."""


def _options() -> tuple[list[str], list[str], float]:
    from clif_core.sample.config import LAYOUTS, REGION_STRENGTH, SCHEDULERS

    return list(SCHEDULERS), list(LAYOUTS) + PLACEMENTS, REGION_STRENGTH


def _limits() -> dict[str, float]:
    """The sampler's limits (clif_core.sample.config), so the widgets stop where the core would refuse."""
    from clif_core.sample.config import MAX_BATCH, MAX_SIDE, MAX_STEPS
    from clif_core.validation import MAX_GUIDANCE, MAX_STRENGTH

    return {"side": MAX_SIDE, "batch": MAX_BATCH, "steps": MAX_STEPS, "cfg": MAX_GUIDANCE, "strength": MAX_STRENGTH}


def _region_inputs(strength: float, layouts: list[str], default: str) -> list:
    return [
        io.Combo.Input("layout", options=layouts, default=default,
                       tooltip="where the region prompts go: equal columns (left_right), rows (top_bottom), a grid, "
                       "explicit boxes, or one mask per region"),
        io.String.Input("region_prompts", multiline=True, default="",
                        tooltip="one prompt per line, in layout order (left to right, top to bottom)"),
        io.String.Input("boxes", default="", tooltip="layout 'boxes': x0,y0,x1,y1 per region (fractions of width "
                        "and height), separated by ';'"),
        io.Float.Input("region_strength", default=strength, min=0.0, max=1.0, step=0.05,
                       tooltip="how much a region prompt replaces the global prompt inside its region"),
    ]


def _masks(region_masks):
    """A ComfyUI MASK ([N,H,W] or [H,W]) as a list of 2-D masks, or None."""
    if region_masks is None:
        return None
    return list(region_masks if region_masks.dim() == 3 else region_masks[None])


def _comfy_previewer(base):
    """ComfyUI's own latent previewer for the model's latent format (latent2rgb, or TAESD when configured)."""
    import comfy.latent_formats
    import latent_preview

    latent_format = comfy.latent_formats.SDXL() if base.family == "sdxl" else comfy.latent_formats.SD15()
    previewer = latent_preview.get_previewer(base.device, latent_format)
    if previewer is None:  # previews switched off in ComfyUI's settings
        return None
    return lambda latents: previewer.decode_latent_to_preview(latents.float())


class CLIFSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        schedulers, layouts, strength = _options()
        limit = _limits()
        strengths = [io.Float.Input(f"strength_{i}", default=1.0, min=-limit["strength"], max=limit["strength"],
                                    step=0.05,
                                    tooltip=f"LoRA strength of concepts_{i}")
                     for i in range(1, CONCEPT_SLOTS + 1)]
        bindings = [io.Int.Input(f"region_{i}", default=0, min=0, max=MAX_REGIONS, optional=True,
                                 tooltip=f"0: concepts_{i} acts on the whole image; N: isolate it to region N of "
                                 "the layout (its LoRA only inside that region, its placeholders only in that "
                                 "region's prompt)")
                    for i in range(1, CONCEPT_SLOTS + 1)]
        return io.Schema(
            node_id="CLIFSampler",
            display_name="CLIF Sampler",
            category="CLIF/sample",
            description="Generates images from a CLIF base model with up to three concept files or erasure patches "
            "applied for this run; placeholders such as <alice> in the prompts resolve to the concepts. Optional "
            "regional prompts place concepts without pose or sketch images; region_N isolates a concept file to one region. The recipe output lists everything "
            "needed to reproduce the images (use CLIF Save Image to store it in the PNGs).",
            inputs=[
                BaseModelType.Input("clif_base"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="the prompt; concept placeholders such as <alice> are understood"),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="what the images should not show"),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                             tooltip="seed of the first image; image i of the batch uses seed + i"),
                io.Int.Input("steps", default=30, min=1, max=limit["steps"], tooltip="denoising steps"),
                io.Float.Input("cfg", default=7.0, min=0.0, max=limit["cfg"], step=0.1, round=0.01,
                               tooltip="classifier-free guidance scale"),
                io.Combo.Input("scheduler", options=schedulers, default="euler", tooltip="the noise scheduler"),
                io.Int.Input("width", default=512, min=16, max=limit["side"], step=8,
                             tooltip="image width in pixels"),
                io.Int.Input("height", default=512, min=16, max=limit["side"], step=8,
                             tooltip="image height in pixels"),
                io.Int.Input("batch_size", default=1, min=1, max=limit["batch"], tooltip="images per run"),
                *strengths,
                *bindings,
                *_region_inputs(strength, [REGION_OFF, *layouts], REGION_OFF),
                *[ConceptsType.Input(f"concepts_{i}", optional=True) for i in range(1, CONCEPT_SLOTS + 1)],
                io.Mask.Input("region_masks", optional=True, tooltip="layout 'masks': one mask per region prompt"),
            ],
            outputs=[io.Image.Output(display_name="IMAGE"), io.String.Output(display_name="recipe")],
        )

    @classmethod
    def execute(cls, clif_base, prompt: str, negative_prompt: str, seed: int, steps: int, cfg: float,
                scheduler: str, width: int, height: int, batch_size: int, layout: str, region_prompts: str,
                boxes: str, region_strength: float, region_masks=None, **slots) -> io.NodeOutput:
        from clif_core.sample.config import SampleConfig
        from clif_core.sample.regional import build_regions
        from clif_core.sample.sampler import ConceptUse, sample

        from .comfy_adapter import free_comfy_memory, pil_to_image, reporter

        regions = () if layout == REGION_OFF else build_regions(
            layout, region_prompts.splitlines(), boxes, _masks(region_masks), region_strength)
        uses = [ConceptUse(slots[f"concepts_{i}"], slots[f"strength_{i}"], region=slots.get(f"region_{i}") or None)
                for i in range(1, CONCEPT_SLOTS + 1) if slots.get(f"concepts_{i}") is not None]
        free_comfy_memory()
        base = clif_base.load()
        previewer = _comfy_previewer(base)
        config = SampleConfig(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps, cfg=cfg,
                              scheduler=scheduler, width=width, height=height, batch=batch_size, regions=regions,
                              preview_every=1 if previewer else 0)
        result = sample(base, config, uses, reporter(steps), previewer)
        return io.NodeOutput(pil_to_image(result.images), result.recipe_json())


class RegionalConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        _, layouts, strength = _options()
        return io.Schema(
            node_id="CLIFRegionalConditioning",
            display_name="CLIF Regional Conditioning",
            category="CLIF/sample",
            description="Builds ComfyUI-native masked conditioning for the stock KSampler from a global prompt and one "
            "prompt per region placed by a layout (columns, rows, grid, boxes or masks). Each region's prompt "
            "weighs region_strength inside its region, the global prompt the rest; ComfyUI blends the noise "
            "predictions by these masks. Feed a CLIP patched by CLIF Apply Concepts to use <placeholders>.",
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input("global_prompt", multiline=True, default="",
                                tooltip="the prompt for the whole image; each region adds its own prompt"),
                *_region_inputs(strength, layouts, layouts[0]),
                io.Mask.Input("region_masks", optional=True, tooltip="layout 'masks': one mask per region prompt"),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING")],
        )

    @classmethod
    def execute(cls, clip, global_prompt: str, layout: str, region_prompts: str, boxes: str,
                region_strength: float, region_masks=None) -> io.NodeOutput:
        regions, weights = layout_weights(layout, region_prompts, boxes, region_strength, region_masks)
        conditioning = []
        for text, weight in zip([global_prompt, *(r.prompt for r in regions)], weights):
            if weight.any():  # not e.g. the global prompt when regions at full strength tile the image
                conditioning += masked_conditioning(clip, text, weight)
        return io.NodeOutput(conditioning)


def layout_weights(layout: str, region_prompts: str, boxes: str, region_strength: float, region_masks=None):
    """(regions, weights [1 + R, H, W]) of a node's layout inputs: the global prompt's weights first."""
    from clif_core.sample.regional import build_regions, region_weights

    masks = _masks(region_masks)
    regions = build_regions(layout, region_prompts.splitlines(), boxes, masks, region_strength)
    height, width = tuple(masks[0].shape) if layout == "masks" else (MASK_RASTER, MASK_RASTER)
    return regions, region_weights(regions, height, width)


def masked_conditioning(clip, text: str, weight) -> list:
    """`text` encoded by `clip` as ComfyUI conditioning that weighs `weight` ([H, W]) at each pixel."""
    import node_helpers

    encoded = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return node_helpers.conditioning_set_values(
        encoded, {"mask": weight[None], "set_area_to_bounds": False, "mask_strength": 1.0})


class SaveImageWithRecipe(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CLIFSaveImage",
            display_name="CLIF Save Image (with recipe)",
            category="CLIF/sample",
            description="Saves images to output/ as PNG with the CLIF Sampler's recipe in the text chunks "
            "(clif.recipe as JSON, and an A1111-style 'parameters' text), next to ComfyUI's own workflow metadata. "
            "Each image of a batch gets its own seed in its recipe.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images"),
                io.String.Input("recipe", force_input=True,
                                tooltip="the CLIF Sampler's recipe output, stored in each PNG's metadata"),
                io.String.Input("filename_prefix", default="clif/CLIF",
                                tooltip="output/<prefix>_NNNNN.png; a folder part makes a subfolder"),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, images, recipe: str, filename_prefix: str) -> io.NodeOutput:
        import os

        import folder_paths
        from comfy.cli_args import args

        from clif_core.errors import ClifError
        from clif_core.sample.recipe import RECIPE_FORMAT, image_recipe, save_png

        from .comfy_adapter import image_to_pil

        try:
            run = json.loads(recipe)
        except ValueError:
            run = None
        if not isinstance(run, dict) or run.get("format") != RECIPE_FORMAT:
            raise ClifError("the recipe input is not a CLIF recipe; connect the recipe output of a CLIF Sampler")
        extra: dict[str, str] = {}
        if not args.disable_metadata:  # ComfyUI's own metadata, as its SaveImage writes it
            if cls.hidden.prompt is not None:
                extra["prompt"] = json.dumps(cls.hidden.prompt)
            for key, value in (cls.hidden.extra_pnginfo or {}).items():
                extra[key] = json.dumps(value)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1])
        per_image = int(run.get("batch", 1)) == images.shape[0]
        saved = []
        for i, image in enumerate(image_to_pil(images)):
            name = f"{filename.replace('%batch_num%', str(i))}_{counter + i:05}_.png"
            save_png(image, os.path.join(folder, name), image_recipe(run, i) if per_image else run, extra)
            saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
        return io.NodeOutput(ui={"images": saved})


NODES = [CLIFSampler, RegionalConditioning, SaveImageWithRecipe]
