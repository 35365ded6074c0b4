"""CLIF Empty Latent (model-sized) in the real ComfyUI server: the size typed is the size decoded, on the
sandbox model (4 pixels per latent cell) and the tiny SD1 model (2), where the stock Empty Latent Image
(8 assumed) gives half and a quarter; a size the VAE cannot make is refused on the node."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from clif_core.models.bundled import SANDBOX_CHOICE, sandbox_available
from tests.comfyui.rig import ExecutionFailed

pytestmark = [pytest.mark.comfy, pytest.mark.every_comfyui]

TINY = "checkpoints/latents-tiny-sd1.safetensors"


def decode_graph(base_model: str, latent: dict) -> dict:
    """Base model → latent → one KSampler step → VAE Decode → Save Image."""
    return {
        "1": {"class_type": "CLIFLoadBaseModel", "inputs": {"base_model": base_model}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 2], "text": "a red circle"}},
        "3": latent,
        "4": {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "seed": 1,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 3]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "latents/out"}},
    }


def model_sized(width: int, height: int, batch_size: int = 1) -> dict:
    return {"class_type": "CLIFEmptyLatent",
            "inputs": {"vae": ["1", 3], "width": width, "height": height, "batch_size": batch_size}}


def stock(width: int, height: int) -> dict:
    return {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}}


def decoded_sizes(comfy_server, graph: dict) -> list[tuple[int, int]]:
    return [Image.open(p).size for p in comfy_server.output_files(comfy_server.run(graph, timeout=300))]


@pytest.fixture(scope="module")
def tiny_base(comfy_server, tiny_sd1) -> str:
    target = comfy_server.models_dir / TINY
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_sd1.single_file, target)
    return TINY


@pytest.mark.skipif(not sandbox_available(), reason="the sandbox model's weights are not in this checkout")
def test_sandbox_model_decodes_the_size_typed(comfy_server):
    assert decoded_sizes(comfy_server, decode_graph(SANDBOX_CHOICE, model_sized(64, 64, 2))) == [(64, 64)] * 2
    assert decoded_sizes(comfy_server, decode_graph(SANDBOX_CHOICE, model_sized(96, 64))) == [(96, 64)]
    # what the node is for: the stock node assumes 8 pixels per cell, the sandbox VAE has 4
    assert decoded_sizes(comfy_server, decode_graph(SANDBOX_CHOICE, stock(64, 64))) == [(32, 32)]


def test_tiny_sd1_model_decodes_the_size_typed(comfy_server, tiny_base):
    assert decoded_sizes(comfy_server, decode_graph(tiny_base, model_sized(64, 48))) == [(64, 48)]


def test_a_size_the_vae_cannot_make_is_refused_on_the_node(comfy_server, tiny_base):
    with pytest.raises(ExecutionFailed) as caught:
        comfy_server.run(decode_graph(tiny_base, model_sized(64, 63)), timeout=300)
    assert caught.value.details["node_type"] == "CLIFEmptyLatent"
    message = caught.value.details["exception_message"]
    assert "height 63 px is not a multiple of 2" in message and "use 62 or 64" in message
