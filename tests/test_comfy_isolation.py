"""CLIF Apply Concepts (Regional) in the real ComfyUI server: a concept file isolated to a region changes the stock
KSampler's latent only inside that region, where the same file applied to the whole MODEL changes it everywhere."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.comfyui.rig import ExecutionFailed
from tests.helpers.comfy_sampling import CHECKPOINT, CONCEPTS

pytestmark = pytest.mark.comfy


def graph(strength: float, prefix: str, everywhere: bool = False, global_prompt: str = "a table") -> dict:
    model = ["9", 0] if everywhere else ["1", 1]
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": CONCEPTS}},
        "3": {"class_type": "CLIFApplyConceptsRegional", "inputs": {
            "clip": ["1", 2], "global_prompt": global_prompt, "layout": "left_right",
            "region_prompts": "a red apple\n<alice>, a woman", "boxes": "", "region_strength": 1.0,
            "concepts_1": ["2", 0], "region_1": 2, "strength_1": strength}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 9,
            "steps": 1, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
        "9": {"class_type": "CLIFApplyConcepts", "inputs": {"model": ["1", 1], "clip": ["1", 2],
                                                           "concepts": ["2", 0], "strength_model": 1.0,
                                                           "strength_clip": 0.0}},
    }


def test_isolated_concept_changes_only_its_region_in_the_stock_ksampler(comfy_server, comfy_sample_concepts):
    def latent(strength: float, prefix: str, everywhere: bool = False) -> torch.Tensor:
        entry = comfy_server.run(graph(strength, prefix, everywhere), timeout=300)
        [path] = comfy_server.output_files(entry, kind="latents")
        return load_file(str(path))["latent_tensor"][0]

    off = latent(0.0, "latents/iso_off")
    isolated = latent(1.0, "latents/iso_on")
    everywhere = latent(1.0, "latents/iso_all", everywhere=True)
    assert off.shape[-1] == 32
    assert torch.equal(isolated[..., :16], off[..., :16])  # region 1 never sees the LoRA
    assert (isolated[..., 16:] - off[..., 16:]).abs().mean() > 1e-3  # region 2 does
    assert (everywhere[..., :16] - off[..., :16]).abs().mean() > 1e-3  # unisolated, it bleeds into region 1


def test_isolated_placeholder_in_the_global_prompt_is_refused_on_the_node(comfy_server, comfy_sample_concepts):
    with pytest.raises(ExecutionFailed, match="global prompt uses <alice>, whose concept file is isolated to region 2"):
        comfy_server.run(graph(1.0, "latents/iso_bad", global_prompt="<alice> at a table"), timeout=300)
