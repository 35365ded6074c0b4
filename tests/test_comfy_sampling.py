"""CLIF/sample nodes in the real ComfyUI server: the CLIF Sampler path and the native regional path in one graph,
masks landing where they should in the stock KSampler's latents, and cancelling a CLIF Sampler run."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from clif_core.sample.config import SampleConfig
from clif_core.sample.recipe import concept_file_fingerprint, read_png_recipe
from clif_core.sample.regional import layout_regions
from clif_core.sample.sampler import sample
from tests.comfyui.rig import ExecutionInterrupted
from tests.helpers.comfy_sampling import CHECKPOINT, CONCEPTS

pytestmark = pytest.mark.comfy

def sampler_inputs(**overrides) -> dict:
    inputs = {
        "clif_base": ["1", 0], "prompt": "<alice> and <bob> at a table", "negative_prompt": "blurry", "seed": 4,
        "steps": 2, "cfg": 5.0, "scheduler": "euler_a", "width": 64, "height": 64, "batch_size": 2,
        "strength_1": 0.8, "strength_2": 1.0, "strength_3": 1.0, "concepts_1": ["2", 0],
        "layout": "left_right", "region_prompts": "<alice>, a woman\n<bob>, a man", "boxes": "",
        "region_strength": 0.8,
    }
    inputs.update(overrides)
    return inputs


def both_paths_graph(regional_text: str) -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": CONCEPTS}},
        # the pack's own sampler
        "3": {"class_type": "CLIFSampler", "inputs": sampler_inputs()},
        "4": {"class_type": "CLIFSaveImage", "inputs": {"images": ["3", 0], "recipe": ["3", 1],
                                                       "filename_prefix": "sample/clif"}},
        # the native path: concepts on ComfyUI's MODEL/CLIP, regional conditioning, stock KSampler
        "5": {"class_type": "CLIFApplyConcepts", "inputs": {"model": ["1", 1], "clip": ["1", 2], "concepts": ["2", 0],
                                                           "strength_model": 0.8, "strength_clip": 1.0}},
        "6": {"class_type": "CLIFRegionalConditioning", "inputs": {
            "clip": ["5", 1], "global_prompt": "two people at a table", "layout": "left_right",
            "region_prompts": regional_text, "boxes": "", "region_strength": 0.8}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["5", 1]}},
        # ComfyUI sizes latents as pixels/8; the tiny VAE upsamples by 2, so 256 px of latent give 64 px images
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["8", 0], "seed": 4,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 3]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "sample/native"}},
    }


def test_one_graph_runs_the_clif_sampler_and_the_native_regional_path(comfy_server, comfy_sample_concepts):
    base, concepts = comfy_sample_concepts
    entry = comfy_server.run(both_paths_graph("<alice>, a woman\n<bob>, a man"), timeout=300)
    clif_files = [p for p in comfy_server.output_files(entry) if p.name.startswith("clif_")]
    [native] = [p for p in comfy_server.output_files(entry) if p.name.startswith("native_")]
    assert len(clif_files) == 2

    # The CLIF Sampler's images carry their recipes, one seed each, with the concept file's fingerprint...
    recipes = [read_png_recipe(p) for p in clif_files]
    assert [r["seed"] for r in recipes] == [4, 5] and all(r["batch"] == 1 for r in recipes)
    [entry_concepts] = recipes[0]["concepts"]
    assert entry_concepts["fingerprint"] == concept_file_fingerprint(concepts) and entry_concepts["strength"] == 0.8
    assert recipes[0]["regions"][1] == {"prompt": "<bob>, a man", "box": [0.5, 0.0, 1.0, 1.0], "strength": 0.8}
    assert recipes[0]["base"]["fingerprint"] == base.fingerprint
    with Image.open(clif_files[0]) as im:
        assert "prompt" in im.text and "parameters" in im.text  # ComfyUI's graph too
        served = np.asarray(im.convert("RGB"), dtype=np.int16)
    # ...and are the images the core sampler makes with those settings.
    config = SampleConfig("<alice> and <bob> at a table", negative_prompt="blurry", seed=4, steps=2, cfg=5.0,
                          scheduler="euler_a", width=64, height=64, batch=2,
                          regions=layout_regions("left_right", ["<alice>, a woman", "<bob>, a man"], 0.8))
    local = sample(base, config, [(concepts, 0.8)])
    assert np.abs(served - np.asarray(local.images[0], dtype=np.int16)).max() <= 2

    # The native path saved a 64 px image, and its regional prompts matter.
    with Image.open(native) as im:
        assert im.size == (64, 64)
        regional = np.asarray(im.convert("RGB"), dtype=np.int16)
    entry = comfy_server.run(both_paths_graph("a red apple\na blue car"), timeout=300)
    [other] = [p for p in comfy_server.output_files(entry) if p.name.startswith("native_")]
    assert np.abs(np.asarray(Image.open(other).convert("RGB"), dtype=np.int16) - regional).mean() > 1.0


def regional_latent_graph(right_prompt: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFRegionalConditioning", "inputs": {
            "clip": ["1", 2], "global_prompt": "a table", "layout": "left_right",
            "region_prompts": f"a red apple\n{right_prompt}", "boxes": "", "region_strength": 1.0}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 9,
            "steps": 1, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}},
    }


def test_native_regional_masks_weight_the_noise_predictions_where_they_should(comfy_server, comfy_sample_concepts):
    """One KSampler step: the left half of the latent depends only on the left region's prompt, so changing the
    right region's prompt must leave it bit-identical and change the right half."""

    def latent(right: str, prefix: str) -> torch.Tensor:
        entry = comfy_server.run(regional_latent_graph(right, prefix), timeout=300)
        [path] = comfy_server.output_files(entry, kind="latents")
        return load_file(str(path))["latent_tensor"][0]

    car = latent("a blue car", "latents/car")
    boat = latent("a green boat on a lake", "latents/boat")
    assert car.shape[-1] == 32
    assert torch.equal(car[..., :16], boat[..., :16])
    assert (car[..., 16:] - boat[..., 16:]).abs().mean() > 1e-3


def test_cancelling_the_clif_sampler_stops_it_and_the_next_run_works(comfy_server, comfy_sample_concepts):
    long_run = sampler_inputs(steps=1000, batch_size=8, width=128, height=128, seed=123)  # 1000: the step limit
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": CONCEPTS}},
        "3": {"class_type": "CLIFSampler", "inputs": long_run},
        "4": {"class_type": "CLIFSaveImage", "inputs": {"images": ["3", 0], "recipe": ["3", 1],
                                                       "filename_prefix": "sample/cancelled"}},
    }
    prompt_id = comfy_server.submit(graph)
    deadline = time.monotonic() + 120
    while prompt_id not in comfy_server.running_prompt_ids():
        assert time.monotonic() < deadline, "the prompt never started"
        time.sleep(0.2)
    threading.Timer(3.0, comfy_server.interrupt).start()  # well inside the 1000 steps
    began = time.monotonic()
    with pytest.raises(ExecutionInterrupted):
        comfy_server.wait(prompt_id, timeout=120)
    assert time.monotonic() - began < 60
    assert not list((comfy_server.output_dir / "sample").glob("cancelled*"))
    # The concepts were taken off the cached base model: applying them again in the next run works.
    graph["3"]["inputs"] = sampler_inputs(steps=1, batch_size=1, seed=124)
    entry = comfy_server.run(graph, timeout=300)
    assert len(comfy_server.output_files(entry)) == 1
