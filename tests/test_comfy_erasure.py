"""CLIF/erase nodes in the real ComfyUI server: Erase Concepts writes a patch, the patch changes the stock
KSampler's image through Apply Erasure Patch and, exported, through the stock LoraLoader (the same image),
a patch of another base is refused on its node, Purify Image keeps the picture's size."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from clif_core.concepts.files import load_concept_file
from clif_core.erase.config import EraseConfig, EraseTarget
from clif_core.erase.trainer import erase_concepts
from clif_core.models.loader import load_base_model
from clif_core.training.checkpoint import list_checkpoints
from clif_core.training.loop import LoopConfig
from tests.comfyui.rig import ExecutionFailed, ExecutionInterrupted
from tests.helpers.comfy_progress import progress_listener
from tests.helpers.threads import single_thread

pytestmark = pytest.mark.comfy

CHECKPOINT = "checkpoints/tiny_sd1.safetensors"
PATCH = "erase_no_pigs.safetensors"
FOREIGN = "erase_other_base.safetensors"


def strong_config() -> EraseConfig:
    """A few steps at a high learning rate: enough for the tiny model's images to change visibly."""
    return EraseConfig(targets=[EraseTarget("a photo of a pig", "a photo of a cow")], lr=3e-2, trajectories=1,
                       sample_steps=4, resolution=32,
                       loop=LoopConfig(steps=8, batch_size=2, preview_every=0, log_every=0))


@pytest.fixture(scope="module")
def installed(comfy_server, comfy_tiny_sd1, tiny_sd1, tmp_path_factory):
    """The tiny checkpoint, a strong patch made on it, and a patch made on another tiny model."""
    from clif_core.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("comfy_erase")
    patches = comfy_server.models_dir / "clif_erasure"
    legacy = comfy_server.models_dir / "clif_concepts"  # where patches were saved before clif_erasure existed
    other = write_tiny_model("sd1", root / "other", seed=1)
    with single_thread():
        erase_concepts(load_base_model(tiny_sd1.single_file, device="cpu"), strong_config(), root / "run",
                       patches / PATCH)
        erase_concepts(load_base_model(other.single_file, device="cpu"), strong_config(), root / "run_other",
                       legacy / FOREIGN)
    return patches / PATCH


def render_graph(prefix: str, model_source: list, extra: dict | None = None) -> dict:
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a pig", "clip": ["1", 2]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 2]}},
        # ComfyUI sizes latents as pixels/8; the tiny VAE upsamples by 2: 256 px of latent give 64 px images
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": model_source, "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
            "seed": 7, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 3]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    graph.update(extra or {})
    return graph


def apply_nodes(patch: str, allow_other_base: bool = False) -> dict:
    return {
        "2": {"class_type": "CLIFLoadErasurePatch", "inputs": {"patch": patch}},
        "3": {"class_type": "CLIFApplyErasurePatch", "inputs": {
            "model": ["1", 1], "erasure_patch": ["2", 0], "strength": 1.0, "allow_other_base": allow_other_base}},
    }


def render(server, graph: dict) -> np.ndarray:
    [path] = server.output_files(server.run(graph, timeout=240))
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def erase_graph(name: str, steps: int, targets: str = "a photo of a pig -> a photo of a cow") -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFEraseConcepts", "inputs": {
            "clif_base": ["1", 0], "targets": targets, "preserve": "a photo of a dog", "method": "all-but-one",
            "params": "auto", "steps": steps, "filename": name, "run_name": name, "restart": False,
            "overwrite": False, "learning_rate": 1e-3, "trajectories": 1, "sample_steps": 2, "resolution": 32,
            "batch_size": 1, "preview_every": 1}},
    }


def test_erase_concepts_node_writes_a_patch_and_its_run_folder(comfy_server, installed):
    graph = erase_graph("node_made", 2, "a photo of a pig -> a photo of a cow\nvan gogh")
    entry = comfy_server.run(graph, timeout=600)
    path = comfy_server.models_dir / "clif_erasure" / "node_made.safetensors"
    patch = load_concept_file(path)
    assert patch.kind == "erasure" and patch.metadata["erased"][1] == {"target": "van gogh", "alternative": None}
    run = comfy_server.output_dir / "clif_runs" / "node_made"
    assert (run / "run.json").is_file() and (run / "metrics.json").is_file()
    assert "uncond_drift" in entry["outputs"]["2"]["text"][0]
    # A bad target list fails on the node, naming the problem, and writes nothing.
    graph["2"]["inputs"].update(targets="pig -> pig", filename="never")
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(graph, timeout=120)
    assert caught.value.node_type == "CLIFEraseConcepts" and "names itself" in caught.value.exception_message
    assert not (comfy_server.models_dir / "clif_erasure" / "never.safetensors").exists()


def test_cancel_keeps_the_finished_steps_writes_no_patch_and_the_run_resumes(comfy_server, installed):
    run = comfy_server.output_dir / "clif_runs" / "cancelled"
    graph = erase_graph("cancelled", steps=500)
    ws, seen = progress_listener(comfy_server, "2")
    try:
        prompt_id = comfy_server.submit(graph)
        deadline = time.monotonic() + 240
        while not any(v >= 2 + 2 for v in seen):  # the 2 pool steps and 2 training steps are done
            assert time.monotonic() < deadline, "no erasure progress arrived"
            time.sleep(0.01)
        comfy_server.interrupt(prompt_id)
        with pytest.raises(ExecutionInterrupted):
            comfy_server.wait(prompt_id, timeout=120)
    finally:
        ws.close()
    saved = list_checkpoints(run / "checkpoints")
    assert saved and saved[-1][0] >= 2, "the finished steps were not kept"
    assert not (comfy_server.models_dir / "clif_erasure" / "cancelled.safetensors").exists()
    graph["2"]["inputs"]["steps"] = saved[-1][0] + 1  # queued again (a changed step count re-runs the node)
    comfy_server.run(graph, timeout=300)
    assert load_concept_file(comfy_server.models_dir / "clif_erasure" / "cancelled.safetensors").kind == "erasure"
    assert "erasure: resuming from step" in comfy_server.log_text()


def test_patch_changes_the_native_image_the_same_through_apply_and_the_stock_loraloader(comfy_server, installed):
    plain = render(comfy_server, render_graph("erase/plain", ["1", 1]))
    applied = render(comfy_server, render_graph("erase/applied", ["3", 0], apply_nodes(PATCH)))
    assert np.abs(applied - plain).mean() > 1.0
    # The Load node lists only erasure patches; export goes through the concept nodes' own exporter.
    listed = json.dumps(comfy_server.object_info("CLIFLoadErasurePatch")["input"]["required"]["patch"])
    assert PATCH in listed and "alice_bob" not in listed  # concept files of other tests are not patches
    assert FOREIGN in listed, "a patch saved in models/clif_concepts by an older version is not listed"
    export = {"2": {"class_type": "CLIFLoadErasurePatch", "inputs": {"patch": PATCH}},
              "3": {"class_type": "CLIFExportConcepts", "inputs": {"concepts": ["2", 0], "name": "no_pigs",
                                                                  "overwrite": True}}}
    comfy_server.run(export, timeout=120)
    assert (comfy_server.models_dir / "loras" / "no_pigs.safetensors").is_file()
    stock = render(comfy_server, render_graph("erase/stock", ["3", 0], {
        "3": {"class_type": "LoraLoader", "inputs": {"model": ["1", 1], "clip": ["1", 2],
                                                    "lora_name": "no_pigs.safetensors",
                                                    "strength_model": 1.0, "strength_clip": 1.0}}}))
    assert np.abs(stock - applied).max() <= 1


def test_apply_refuses_a_patch_made_for_another_base_unless_allowed(comfy_server, installed):
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(render_graph("erase/foreign", ["3", 0], apply_nodes(FOREIGN)), timeout=120)
    assert caught.value.node_type == "CLIFApplyErasurePatch"
    assert "another base model" in caught.value.exception_message
    render(comfy_server, render_graph("erase/foreign_allowed", ["3", 0], apply_nodes(FOREIGN, True)))


def test_purify_image_keeps_the_picture_size(comfy_server, installed):
    picture = np.zeros((67, 90, 3), dtype=np.uint8)  # odd sizes, above the 64 px minimum side
    picture[:, :45] = (200, 50, 50)
    Image.fromarray(picture).save(comfy_server.input_dir / "purify_me.png")
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadErasurePatch", "inputs": {"patch": PATCH}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "purify_me.png"}},
        "4": {"class_type": "CLIFPurifyImage", "inputs": {
            "clif_base": ["1", 0], "erasure_patch": ["2", 0], "image": ["3", 0], "prompt": "", "steps": 3,
            "strength": 1.0, "guidance_scale": 1.0, "allow_other_base": False}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "erase/purified"}},
    }
    [path] = comfy_server.output_files(comfy_server.run(graph, timeout=240))
    assert Image.open(path).size == (90, 67)
