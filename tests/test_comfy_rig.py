"""The real-ComfyUI rig itself: the server starts with the pack, answers, reports failures, keeps serving."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image

from tests.comfyui.rig import ExecutionFailed, ExecutionInterrupted, PromptRejected

pytestmark = pytest.mark.comfy


@pytest.mark.every_comfyui
def test_server_lists_stock_nodes_and_the_pack(comfy_server):
    info = comfy_server.object_info()
    for stock in ("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage"):
        assert stock in info
    assert "seed" in comfy_server.object_info("KSampler")["input"]["required"]
    pack_nodes = [name for name, node in info.items() if node.get("python_module", "").endswith("comfyui-clif")]
    assert pack_nodes, "the pack linked as custom_nodes/comfyui-clif registered no node"
    failed = [line for line in comfy_server.log_text().splitlines() if "IMPORT FAILED" in line and "comfyui-clif" in line]
    assert not failed, failed


def test_invalid_graph_is_rejected_with_node_errors(comfy_server):
    with pytest.raises(PromptRejected) as caught:
        comfy_server.submit({"1": {"class_type": "NoSuchNodeAnywhere", "inputs": {}}})
    assert "NoSuchNodeAnywhere" in str(caught.value)


def test_failed_node_reports_execution_error_and_server_serves_next_prompt(comfy_server):
    # LoadImage validates only that the file exists: a non-image fails while the node executes.
    (comfy_server.input_dir / "rig_broken.png").write_bytes(b"this is not a PNG")
    broken = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rig_broken.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(broken, timeout=60)
    failure = caught.value
    assert (failure.node_id, failure.node_type) == ("1", "LoadImage")
    assert "rig_broken.png" in failure.exception_message

    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(comfy_server.input_dir / "rig_ok.png")
    good = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rig_ok.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "rig/ok"}},
    }
    entry = comfy_server.run(good, timeout=60)
    [saved] = comfy_server.output_files(entry)
    assert saved.is_file() and saved.parent == comfy_server.output_dir / "rig"
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), pixels)


def test_interrupt_stops_a_long_sampling_run(comfy_server, tiny_sd1):
    """A 10,000-step KSampler on the tiny model is cut short by interrupt() and reported as interrupted."""
    shutil.copy(tiny_sd1.single_file, comfy_server.models_dir / "checkpoints" / "rig-tiny-sd1.safetensors")
    graph = {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": "checkpoints/rig-tiny-sd1.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 2], "text": "a red dog"}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 1,
            "steps": 10000, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 3]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    log_start = comfy_server.log_size()
    prompt_id = comfy_server.submit(graph)
    deadline = time.monotonic() + 90
    while "/10000 [" not in comfy_server.log_text(log_start):  # the sampler's progress bar has started
        assert time.monotonic() < deadline, "the sampler never started"
        if comfy_server.history(prompt_id) is not None:  # ended early: wait() raises its error
            comfy_server.wait(prompt_id, timeout=1)
            pytest.fail("the 10,000-step prompt finished before it could be interrupted")
        time.sleep(0.1)
    began = time.monotonic()
    comfy_server.interrupt(prompt_id)
    with pytest.raises(ExecutionInterrupted) as caught:
        comfy_server.wait(prompt_id, timeout=60)
    assert caught.value.details["node_type"] == "KSampler"
    assert time.monotonic() - began < 30
    assert comfy_server.running_prompt_ids() == []
