"""nodes/comfy_compat.py in every supported ComfyUI version: each reach into ComfyUI internals works there
(tests/comfyui/compat_probe.py runs in the version's own Python path), and a ComfyUI that changed them gets
a ClifError naming its version and the supported range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui.rig import CARRIERS, comfy_subprocess_env, ensure_comfyui

pytestmark = [pytest.mark.comfy, pytest.mark.every_comfyui]

PROBE = Path(__file__).parent / "comfyui" / "compat_probe.py"


@pytest.mark.parametrize("version", sorted(CARRIERS))
def test_compat_layer_works_in_each_supported_comfyui(version: str):
    done = subprocess.run([sys.executable, str(PROBE)], cwd=ensure_comfyui(version),
                          env=comfy_subprocess_env(version), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"probe failed in ComfyUI {version}:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert found["version"] == version
    assert found["unet_group_norm_groups"] == 4, "the UNet operations ignore the model's GroupNorm groups"
    assert found["unet_linear_is_comfy_op"], "the UNet operations are not ComfyUI's own"
    assert found["vae_group_norm_groups"] == 4 and found["vae_ops_restored"]
    assert found["size_embedding_width"] == 64
    assert found["embedding_size"] == 32
    assert found["memory_embedding_rows"] == found["vector"], "embedding:<alice> did not resolve to the vectors"
    assert found["original_untouched"], "the tokenizer handed in was changed in place"
    assert found["vae_latent_layout"] == [4, 8], "ComfyUI's VAE class no longer says its latent channels and factor"
    refusal = found["video_vae_refusal"]
    assert "not image latents" in refusal and "connect the VAE of an image model" in refusal
    assert f"ComfyUI {version}" in found["refusal"] and "0.3.52 to 0.3.75" in found["refusal"]
