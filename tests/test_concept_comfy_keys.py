"""ComfyUI's own LoRA key maps and embedding loader accept what concept files and exports hold.

Runs ComfyUI 0.3.75's `comfy.lora` / `comfy.sd1_clip` (installed by the test rig) in a subprocess, so that
its import-time side effects (argument parsing, device set-up) stay out of the test process. The UNet
and text encoders are the published SD1.5 / SD2.1 / SDXL shapes, built on the meta device from the
bundled configs, so ComfyUI's own model detection (`unet_config_from_diffusers_unet`) recognises them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.comfyui.rig import REPO_ROOT, ensure_comfyui

pytestmark = pytest.mark.comfy

_SCRIPT = r"""
import json, sys
comfy_dir, work = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing()
import comfy.lora, comfy.model_detection, comfy.sd1_clip
import torch
from types import SimpleNamespace
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel
from clif_core.concepts import lora_keys
from clif_core.models.families import get_family

report = {}
for family in ("sd1", "sd2", "sdxl"):
    spec = get_family(family)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.load(open(spec.config_path / "unet" / "config.json")))
    unet_config = comfy.model_detection.unet_config_from_diffusers_unet(unet.state_dict())
    model = SimpleNamespace(state_dict=lambda: {}, model_config=SimpleNamespace(unet_config=unet_config))
    unet_map = comfy.lora.model_lora_keys_unet(model, {})
    ours = [k for _, k, _ in lora_keys.target_modules(unet, "lora_unet", lora_keys.UNET_LORA_TARGETS)]

    clip_keys, ours_text = {}, {}
    for keys in lora_keys.text_keys(family):
        cfg = CLIPTextConfig.from_json_file(str(spec.config_path / keys.component / "config.json"))
        with torch.device("meta"):
            encoder = CLIPTextModel(cfg)
        for name, kohya, layer in lora_keys.target_modules(encoder, keys.kohya_prefix, lora_keys.TEXT_LORA_TARGETS):
            comfy_key = f"{keys.name}.transformer.{'text_model.' if not name.startswith('text_model.') else ''}{name}.weight"
            clip_keys[comfy_key] = None
            ours_text[kohya] = comfy_key
    clip_map = comfy.lora.model_lora_keys_clip(SimpleNamespace(state_dict=lambda: clip_keys), {})
    report[family] = {
        "detected": unet_config is not None,
        "unet_modules": len(ours),
        "unet_missing": [k for k in ours if k not in unet_map],
        "text_modules": len(ours_text),
        "text_wrong": [k for k, v in ours_text.items() if clip_map.get(k) != v],
    }

# LoRA math: ComfyUI's patch of a concept file's module equals W + strength * alpha / r * up @ down
torch.manual_seed(0)
lora = {"lora_unet_x_to_q.lora_down.weight": torch.randn(4, 16), "lora_unet_x_to_q.lora_up.weight": torch.randn(8, 4),
        "lora_unet_x_to_q.alpha": torch.tensor(2.0),
        "lora_unet_x_conv1.lora_down.weight": torch.randn(4, 3, 3, 3), "lora_unet_x_conv1.lora_up.weight": torch.randn(5, 4, 1, 1),
        "lora_unet_x_conv1.alpha": torch.tensor(1.0)}
patches = comfy.lora.load_lora(lora, {"lora_unet_x_to_q": "q.weight", "lora_unet_x_conv1": "c.weight"})
errors = []
for module, key, shape in (("lora_unet_x_to_q", "q.weight", (8, 16)), ("lora_unet_x_conv1", "c.weight", (5, 3, 3, 3))):
    weight = torch.randn(shape)
    patched = comfy.lora.calculate_weight([(0.7, patches[key], 1.0, None, None)], weight.clone(), key)
    down, up = lora[module + ".lora_down.weight"], lora[module + ".lora_up.weight"]
    expected = weight + 0.7 * lora[module + ".alpha"] / down.shape[0] * (up.flatten(1) @ down.flatten(1)).reshape(shape)
    errors.append(float((patched - expected).abs().max()))
report["math_error"] = max(errors)

# embeddings: ComfyUI's load_embed reads the exported files as its CLIPTextEncode would
import safetensors.torch
emb = {}
for name, size, key in (("sd1_alice", 32, "clip_l"), ("sdxl_bob", 32, "clip_l"), ("sdxl_bob", 64, "clip_g")):
    got = comfy.sd1_clip.load_embed(name, work, size, key)
    want = safetensors.torch.load_file(f"{work}/{name}.safetensors")
    want = want.get(key, next(iter(want.values())))
    emb[f"{name}/{key}"] = got is not None and bool(torch.equal(got, want))
report["embeddings"] = emb
print("REPORT" + json.dumps(report))
"""


def test_comfyui_maps_every_lora_key_and_reads_every_embedding(tmp_path):
    from clif_core.concepts.exports import export_comfy
    from clif_core.models.tiny import build_tiny_model
    from tests.helpers.concept_files import make_concept_file

    comfy_dir = ensure_comfyui()
    for family, names in (("sd1", ("alice",)), ("sdxl", ("bob",))):
        cf = make_concept_file(build_tiny_model(family, 0), names=names)
        written = export_comfy(cf, tmp_path, tmp_path / "loras", family)
        written[1].rename(tmp_path / f"{family}_{names[0]}.safetensors")

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(comfy_dir), str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=env, timeout=600, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(line[len("REPORT"):])
    for family in ("sd1", "sd2", "sdxl"):
        r = report[family]
        assert r["detected"], f"ComfyUI did not recognise the bundled {family} UNet config"
        assert r["unet_modules"] > 100 and r["unet_missing"] == [], (family, r["unet_missing"][:5])
        assert r["text_modules"] >= 6 * 12 and r["text_wrong"] == [], (family, r["text_wrong"][:5])
    assert report["math_error"] < 1e-5
    assert report["embeddings"] == {"sd1_alice/clip_l": True, "sdxl_bob/clip_l": True, "sdxl_bob/clip_g": True}
