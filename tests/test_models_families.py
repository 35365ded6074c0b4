"""Family specs, bundled configs of the published models, and family detection from files and folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from clif_core.errors import ClifError
from clif_core.models.families import (
    CONFIGS_DIR,
    FAMILIES,
    detect_family_from_diffusers_dir,
    detect_family_from_state_dict,
    get_family,
)
from clif_core.models.ldm_layout import to_original_state_dict
from clif_core.models.loader import read_checkpoint_shapes
from clif_core.models.random_model import build_published_architecture


def real_layout_shapes(family):
    """Key → shape of a real-size single file of `family` (built on the meta device: no memory)."""
    state = to_original_state_dict(build_published_architecture(family, device="meta"))
    return {k: tuple(v.shape) for k, v in state.items()}


def test_family_specs_match_comfyui_slots_and_real_widths():
    assert {n: (s.text_slots, s.text_widths) for n, s in FAMILIES.items()} == {
        "sd1": (("clip_l",), (768,)),
        "sd2": (("clip_h",), (1024,)),
        "sdxl": (("clip_l", "clip_g"), (768, 1280)),
    }
    assert [FAMILIES[n].cross_attention_dim for n in ("sd1", "sd2", "sdxl")] == [768, 1024, 2048]
    assert [FAMILIES[n].prediction_type for n in ("sd1", "sd2", "sdxl")] == ["epsilon", "v_prediction", "epsilon"]
    assert FAMILIES["sdxl"].encoder_subfolders == ("text_encoder", "text_encoder_2")
    assert FAMILIES["sdxl"].tokenizer_subfolders == ("tokenizer", "tokenizer_2")
    with pytest.raises(ClifError, match="unknown model family 'sd3'"):
        get_family("sd3")


# Parameter counts of the published models (diffusers/transformers classes).
PUBLISHED = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_bundled_configs_build_the_published_architectures(family):
    base = build_published_architecture(family, device="meta")
    parts = {"unet": base.unet, "vae": base.vae}
    parts.update(zip(FAMILIES[family].encoder_subfolders, (slot.encoder for slot in base.text)))
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    assert counts == PUBLISHED[family]


@pytest.mark.parametrize(
    "folder,family,scheduler,prediction",
    [
        ("sd15", "sd1", "PNDMScheduler", "epsilon"),
        ("sd21_v", "sd2", "DDIMScheduler", "v_prediction"),
        ("sdxl_base", "sdxl", "EulerDiscreteScheduler", "epsilon"),
    ],
)
def test_bundled_folders_are_diffusers_shaped(folder, family, scheduler, prediction):
    root = CONFIGS_DIR / folder
    assert FAMILIES[family].config_path == root
    assert detect_family_from_diffusers_dir(root) == family
    index = json.loads((root / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", scheduler]
    sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == scheduler and sched["prediction_type"] == prediction
    for sub, pad in zip(FAMILIES[family].tokenizer_subfolders, FAMILIES[family].text_pad_tokens):
        assert json.loads((root / sub / "tokenizer_config.json").read_text())["pad_token"] == pad
        assert json.loads((root / sub / "special_tokens_map.json").read_text())["pad_token"] == pad


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_detects_real_size_single_file_layouts(family):
    assert detect_family_from_state_dict(real_layout_shapes(family), source="real.safetensors") == family


def test_detects_tiny_files_and_folders(tiny_sd1, tiny_sd2, tiny_sdxl):
    for paths in (tiny_sd1, tiny_sd2, tiny_sdxl):
        shapes, _ = read_checkpoint_shapes(paths.single_file)
        assert detect_family_from_state_dict(shapes, source=paths.single_file) == paths.family
        assert detect_family_from_diffusers_dir(paths.diffusers_dir) == paths.family


def test_unsupported_single_files_are_named_with_what_is_supported():
    sd1 = real_layout_shapes("sd1")

    def refused(shapes, *fragments):
        with pytest.raises(ClifError) as caught:
            detect_family_from_state_dict(shapes, source="/models/x.safetensors")
        for fragment in ("/models/x.safetensors",) + fragments:
            assert fragment in str(caught.value)

    refused({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": (4, 320)}, "LoRA", "Stable Diffusion 1.x")
    refused({k[len("first_stage_model."):]: v for k, v in sd1.items() if k.startswith("first_stage_model.")}, "VAE")
    refused({"double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "no Stable Diffusion UNet")
    inpaint = dict(sd1)
    inpaint["model.diffusion_model.input_blocks.0.0.weight"] = (320, 9, 3, 3)
    refused(inpaint, "9 input channels", "inpainting")
    refiner = {k: v for k, v in real_layout_shapes("sdxl").items() if not k.startswith("conditioner.embedders.0.")}
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in refiner.items()}
    refused(refiner, "SDXL refiner")
    no_text = {k: v for k, v in sd1.items() if not k.startswith("cond_stage_model.")}
    refused(no_text, "no text encoder")
    mixed = {k: v for k, v in sd1.items() if not k.startswith("cond_stage_model.")}
    mixed.update({k: v for k, v in real_layout_shapes("sd2").items() if k.startswith("cond_stage_model.")})
    refused(mixed, "768-wide", "1024 wide", "mixes parts")


def test_folder_detection_for_small_models_uses_the_encoder_kind(tiny_sd1, tiny_sd2, tmp_path):
    # Tiny sd1 and sd2 models share widths; the OpenCLIP encoder kind (gelu, "!" padding) tells them apart.
    for paths in (tiny_sd1, tiny_sd2):
        assert json.loads((paths.diffusers_dir / "unet" / "config.json").read_text())["cross_attention_dim"] == 32
    assert detect_family_from_diffusers_dir(tiny_sd2.diffusers_dir) == "sd2"
    assert detect_family_from_diffusers_dir(tiny_sd1.diffusers_dir) == "sd1"

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd1.diffusers_dir, broken)
    (broken / "unet" / "config.json").write_text("{oops")
    with pytest.raises(ClifError, match=r"config.json is not valid JSON"):
        detect_family_from_diffusers_dir(broken)
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(ClifError, match=r"config.json is missing"):
        detect_family_from_diffusers_dir(broken)
    with pytest.raises(ClifError, match="not a diffusers folder"):
        detect_family_from_diffusers_dir(tmp_path)


def test_detection_reads_shapes_only():
    # Meta tensors carry shapes and no data: detection must not touch values.
    shapes = real_layout_shapes("sdxl")
    assert all(isinstance(s, tuple) for s in shapes.values())
    assert detect_family_from_state_dict({k: torch.empty(s, device="meta").shape for k, s in shapes.items()}, source="m") == "sdxl"
