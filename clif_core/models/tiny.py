"""Tiny Stable Diffusion-shaped models for tests and fixtures, built from configs with random weights.

Same classes and key layout as the real families, small sizes:
- UNet: channels (32, 64), one layer per block, cross-attention at both resolutions and in the mid block
  (about 1.1M parameters). SDXL-shaped: two text encoders concatenated as context and "text_time"
  addition embeddings (pooled second-encoder output + 6 size/crop numbers), like SDXL.
- VAE: AutoencoderKL with 4 latent channels and 2 levels, so the latent is the image downscaled by **2**
  (a 64×64 image gives a 32×32 latent; real SD models downscale by 8).
- Text encoders: CLIP with 2 layers, width 32 (SDXL's second: 64), the real 49,408-token vocabulary and
  the real CLIP BPE tokenizer from the bundled files (pad token per family as in the published models).
- A CLIP vision tower whose projection width equals the paired text encoder's projection width, for the
  contrastive stage: it pairs with the last text encoder (clip_l for sd1, clip_h for sd2, clip_g for sdxl).

Everything is deterministic from the seed. `write_tiny_model` writes a diffusers folder and a single-file
checkpoint in the original layout whose metadata carries the configs, so tests load tiny models through the
same `load_base_model` paths a user's model takes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from clif_core.fileio import atomic_dir
from clif_core.models.base import BaseModel
from clif_core.models.clip_bpe import BPE_DIR
from clif_core.models.families import get_family
from clif_core.models.ldm_layout import save_single_file
from clif_core.models.loader import bundled_configs
from clif_core.models.random_model import build_random_model

TINY_IMAGE_SIZE = 64  # pixels; the tiny VAE downscales by 2
TINY_VAE_SCALE = 2

_TEXT_WIDTHS = {"sd1": (32,), "sd2": (32,), "sdxl": (32, 64)}


@dataclass(frozen=True)
class TinyPaths:
    """Where `write_tiny_model` put a tiny model: a diffusers folder, a single file, a vision tower folder."""

    family: str
    diffusers_dir: Path
    single_file: Path
    vision_dir: Path


def tiny_configs(family: str) -> dict[str, dict]:
    """Diffusers/transformers configs of the tiny model of `family`, by component name."""
    spec = get_family(family)
    widths = _TEXT_WIDTHS[spec.name]
    context = sum(widths)
    unet: dict[str, Any] = {
        "sample_size": TINY_IMAGE_SIZE // TINY_VAE_SCALE,
        "in_channels": spec.latent_channels,
        "out_channels": spec.latent_channels,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": context,
        "norm_num_groups": 32,
    }
    if spec.name == "sd1":
        unet.update(attention_head_dim=4)
    else:
        unet.update(attention_head_dim=[2, 4], use_linear_projection=True)
    if spec.name == "sd2":
        unet.update(upcast_attention=True)
    if spec.name == "sdxl":
        time_dim = 8
        unet.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=widths[-1] + 6 * time_dim,
            transformer_layers_per_block=[1, 1],
        )
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": spec.latent_channels,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "sample_size": TINY_IMAGE_SIZE,
        "scaling_factor": bundled_configs(family)["vae"].get("scaling_factor", 0.18215),
    }
    configs = {"unet": unet, "vae": vae, "scheduler": bundled_configs(family)["scheduler"]}
    for i, (sub, width, pad) in enumerate(zip(spec.encoder_subfolders, widths, spec.text_pad_tokens)):
        openai_clip = spec.name == "sd1" or (spec.name == "sdxl" and i == 0)
        configs[sub] = {
            "vocab_size": 49408,
            "hidden_size": width,
            "intermediate_size": 4 * width,
            # SDXL conditions on the penultimate layer; ComfyUI refuses SDXL encoders of fewer than 3 layers.
            "num_hidden_layers": 3 if spec.name == "sdxl" else 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu" if openai_clip else "gelu",
            "projection_dim": width,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 0 if pad == "!" else 49407,
        }
    return configs


def build_tiny_model(family: str, seed: int = 0) -> BaseModel:
    """A tiny model of `family` ("sd1", "sd2", "sdxl") with weights drawn from `seed`, on CPU in float32."""
    return build_random_model(family, tiny_configs(get_family(family).name), seed=seed)


def build_tiny_vision_tower(family: str, seed: int = 0) -> Any:
    """A tiny `CLIPVisionModelWithProjection` (64 px input, 16 px patches) whose projection width equals the
    projection width of `family`'s last tiny text encoder, with weights drawn from `seed`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    spec = get_family(family)
    text = tiny_configs(spec.name)[spec.encoder_subfolders[-1]]
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE,
        patch_size=16,
        projection_dim=text["projection_dim"],
        hidden_act=text["hidden_act"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1_000_003)  # independent of the text side drawn from the same seed
        model = CLIPVisionModelWithProjection(config)
    return model.eval().requires_grad_(False)


def write_tiny_model(family: str, out_dir: Union[str, Path], seed: int = 0) -> TinyPaths:
    """Write the tiny model of `family` as `out_dir/diffusers/` (a diffusers folder), `out_dir/tiny-<family>.
    safetensors` (original single-file layout, configs in its metadata) and `out_dir/vision/` (the vision
    tower and its image processor, a transformers folder). Each is written whole or not at all."""
    from transformers import CLIPImageProcessor

    spec = get_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = build_tiny_model(spec.name, seed)

    diffusers_dir = out / "diffusers"
    with atomic_dir(diffusers_dir) as tmp:
        save_diffusers(base, tmp)

    single_file = save_single_file(base, out / f"tiny-{spec.name}.safetensors")

    vision_dir = out / "vision"
    with atomic_dir(vision_dir) as tmp:
        build_tiny_vision_tower(spec.name, seed).save_pretrained(tmp)
        CLIPImageProcessor(
            size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
        ).save_pretrained(tmp)
    return TinyPaths(spec.name, diffusers_dir, single_file, vision_dir)


def save_diffusers(base: BaseModel, folder: Path) -> None:
    """Write `base` as a diffusers pipeline folder (also used to export the sandbox model)."""
    from .pipeline import diffusers_pipeline

    pipe = diffusers_pipeline(base)
    pipe.save_pretrained(folder, safe_serialization=True)
    # transformers 5 writes only tokenizer.json; older versions' CLIPTokenizer reads vocab.json + merges.txt.
    for sub in get_family(base.family).tokenizer_subfolders:
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(BPE_DIR / name, folder / sub / name)


