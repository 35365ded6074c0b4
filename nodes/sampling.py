"""CLIF/sample nodes: the core sampler, regional conditioning for the stock KSampler, saving with the recipe."""

from __future__ import annotations

import json

from comfy_api.v0_0_2 import io

from .types import BaseModelType, ConceptsType
from .widgets import widget

CONCEPT_SLOTS = 3
REGION_OFF = "off"
PLACEMENTS = ["boxes", "masks"]
MAX_REGIONS = 16
"""Highest region number a concept slot can be isolated to (a layout with more regions is refused there)."""
MASK_RASTER = 256
"""Side of the masks Regional Conditioning rasterises boxes at; ComfyUI resizes them to the latent."""


def _layouts() -> list[str]:
    from clif_core.sample.config import LAYOUTS

    return list(LAYOUTS) + PLACEMENTS


def _region_inputs(layouts: list[str], default: str) -> list:
    from clif_core.sample.config import REGION

    return [
        io.Combo.Input("layout", options=layouts, default=default,
                       tooltip="where the region prompts go: equal columns (left_right), rows (top_bottom), a grid, "
                       "explicit boxes, or one mask per region"),
        io.String.Input("region_prompts", multiline=True, default="",
                        tooltip="one prompt per line, in layout order (left to right, top to bottom)"),
        io.String.Input("boxes", default="", tooltip="layout 'boxes': x0,y0,x1,y1 per region (fractions of width "
                        "and height), separated by ';'"),
        widget(REGION, "strength", "region_strength"),
    ]


_MASKS_TIP = "layout 'masks': one mask per region prompt"


def regional_inputs(global_tooltip: str) -> list:
    """The inputs of a node that builds regional conditioning for the stock KSampler from a CLIP: the global
    prompt, the layout and its region prompts (Regional Conditioning, Apply Concepts (Regional))."""
    layouts = _layouts()
    return [
        io.Clip.Input("clip", tooltip="the CLIP that encodes the prompts"),
        io.String.Input("global_prompt", multiline=True, default="", tooltip=global_tooltip),
        *_region_inputs(layouts, layouts[0]),
        io.Mask.Input("region_masks", optional=True, tooltip=_MASKS_TIP),
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
        from clif_core.sample.config import SAMPLE
        from clif_core.validation import MAX_STRENGTH

        strengths = [io.Float.Input(f"strength_{i}", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH,
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
                BaseModelType.Input("clif_base", tooltip="the base model (CLIF Load Base Model)"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="the prompt; concept placeholders such as <alice> are understood"),
                widget(SAMPLE, "negative_prompt", multiline=True),
                widget(SAMPLE, "seed", control_after_generate=True),
                widget(SAMPLE, "steps"),
                widget(SAMPLE, "cfg", round=0.01),
                *(widget(SAMPLE, name) for name in ("scheduler", "width", "height")),
                widget(SAMPLE, "batch", "batch_size"),
                *strengths,
                *bindings,
                *_region_inputs([REGION_OFF, *_layouts()], REGION_OFF),
                *[ConceptsType.Input(f"concepts_{i}", optional=True,
                                     tooltip=f"a concept file or erasure patch applied for this run (strength_{i})")
                  for i in range(1, CONCEPT_SLOTS + 1)],
                io.Mask.Input("region_masks", optional=True, tooltip=_MASKS_TIP),
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
        return io.Schema(
            node_id="CLIFRegionalConditioning",
            display_name="CLIF Regional Conditioning",
            category="CLIF/sample",
            description="Builds ComfyUI-native masked conditioning for the stock KSampler from a global prompt and one "
            "prompt per region placed by a layout (columns, rows, grid, boxes or masks). Each region's prompt "
            "weighs region_strength inside its region, the global prompt the rest; ComfyUI blends the noise "
            "predictions by these masks. Feed a CLIP patched by CLIF Apply Concepts to use <placeholders>.",
            inputs=regional_inputs("the prompt for the whole image; each region adds its own prompt"),
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
                io.Image.Input("images", tooltip="the images to save"),
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
