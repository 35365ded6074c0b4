"""The real-ComfyUI rig itself: the server starts with the pack, answers, reports failures, keeps serving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.comfyui.rig import ExecutionFailed, PromptRejected

pytestmark = pytest.mark.comfy


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
