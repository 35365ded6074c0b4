"""Bad input to the pack's nodes in the real ComfyUI server: the refusal shows on the node that raised it (the
/history status messages name it) and the server goes on serving the next prompt. A representative subset of
tests/test_bad_input.py and tests/test_filesystem_faults.py, through the nodes."""

from __future__ import annotations

import pytest
from PIL import Image

from clif_core.concepts.files import save_concept_file
from clif_core.fileio import in_use
from clif_core.models.loader import load_base_model
from tests.comfyui.rig import ExecutionFailed
from tests.helpers.broken_files import BROKEN_FILES, rewritten
from tests.helpers.concept_files import make_concept_file

pytestmark = pytest.mark.comfy

CHECKPOINT = "checkpoints/tiny_sd1.safetensors"
GOOD = "bad_input_good.safetensors"
NAN = "bad_input_nan.safetensors"
PATCH = "bad_input_patch.safetensors"


@pytest.fixture(scope="module")
def installed(comfy_server, comfy_tiny_sd1, tiny_sd1, tmp_path_factory):
    """The tiny checkpoint, a good concept file, the same file with a NaN embedding, and an erasure patch."""
    base = load_base_model(tiny_sd1.single_file, device="cpu")
    concepts = comfy_server.models_dir / "clif_concepts"
    good = save_concept_file(make_concept_file(base, seed=3, text_lora=False), concepts / GOOD)
    rewritten(good, concepts / NAN, BROKEN_FILES["nan-embedding"])
    patch = make_concept_file(base, names=(), text_lora=False)
    patch.kind, patch.metadata = "erasure", {"erased": [{"target": "pig", "alternative": None}]}
    save_concept_file(patch, concepts / PATCH)
    Image.new("RGB", (1, 1), (200, 50, 50)).save(comfy_server.input_dir / "one_pixel.png")
    Image.new("RGB", (64, 64), (200, 50, 50)).save(comfy_server.input_dir / "bad_input_ok.png")


def sampler_graph(concept_file: str, width: int = 64, height: int = 64, batch_size: int = 1) -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadConceptFile", "inputs": {"concept_file": concept_file}},
        "3": {"class_type": "CLIFSampler", "inputs": {
            "clif_base": ["1", 0], "prompt": "<alice> at a table", "negative_prompt": "", "seed": 1, "steps": 2,
            "cfg": 5.0, "scheduler": "euler_a", "width": width, "height": height, "batch_size": batch_size,
            "strength_1": 1.0, "strength_2": 1.0, "strength_3": 1.0, "concepts_1": ["2", 0], "layout": "off",
            "region_prompts": "", "boxes": "", "region_strength": 0.8}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def purify_graph(image: str) -> dict:
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFLoadErasurePatch", "inputs": {"patch": PATCH}},
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": {"class_type": "CLIFPurifyImage", "inputs": {
            "clif_base": ["1", 0], "erasure_patch": ["2", 0], "image": ["3", 0], "prompt": "", "steps": 2,
            "strength": 1.0, "guidance_scale": 1.0, "allow_other_base": True}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
    }


def refused_on(comfy_server, graph: dict, node_id: str, node_type: str, *named: str) -> str:
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(graph, timeout=240)
    failed = caught.value
    assert (failed.node_id, failed.node_type) == (node_id, node_type), str(failed)
    assert failed.exception_type.startswith("clif_core."), str(failed)  # ClifError or a subclass of it
    for text in named:
        assert text in failed.exception_message, (text, failed.exception_message)
    return failed.exception_message


def test_a_concept_file_holding_nan_is_refused_on_the_load_node(comfy_server, installed):
    refused_on(comfy_server, sampler_graph(NAN), "2", "CLIFLoadConceptFile", NAN, "NaN or infinite")
    comfy_server.run(sampler_graph(GOOD), timeout=240)  # the server serves the next prompt


def test_an_absurd_sampler_size_is_refused_on_the_sampler_node(comfy_server, installed):
    # each widget is within its own limit; together they ask for 4096 × 4096 × 64 pixels
    refused_on(comfy_server, sampler_graph(GOOD, 4096, 4096, 64), "3", "CLIFSampler", "megapixels")
    comfy_server.run(sampler_graph(GOOD), timeout=240)


def test_a_one_pixel_picture_is_refused_on_the_purify_node(comfy_server, installed):
    refused_on(comfy_server, purify_graph("one_pixel.png"), "4", "CLIFPurifyImage", "1x1", "minimum")
    outputs = comfy_server.run(purify_graph("bad_input_ok.png"), timeout=240)
    assert outputs


def test_an_erasure_run_folder_in_use_elsewhere_is_refused_on_the_erase_node(comfy_server, installed):
    """A CLI run (here: this test process) holds output/clif_runs/busy; a queue item on it must not write."""
    run = comfy_server.output_dir / "clif_runs" / "busy"
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": CHECKPOINT}},
        "2": {"class_type": "CLIFEraseConcepts", "inputs": {
            "clif_base": ["1", 0], "targets": "pig", "preserve": "", "method": "all-but-one", "params": "auto",
            "steps": 1, "filename": "bad_input_busy", "run_name": "busy", "restart": False, "overwrite": False,
            "trajectories": 1, "sample_steps": 2, "resolution": 32, "batch_size": 1, "preview_every": 0}},
    }
    with in_use(run):
        refused_on(comfy_server, graph, "2", "CLIFEraseConcepts", str(run), "in use by another run")
    assert not run.exists()
    assert not (comfy_server.models_dir / "clif_concepts" / "bad_input_busy.safetensors").exists()
    comfy_server.run(sampler_graph(GOOD), timeout=240)

