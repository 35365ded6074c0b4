"""Models with random weights: the published architectures (SD 1.5, SD 2.1-768, SDXL base) from the bundled
configs, or any family's from configs handed in (the tiny test models).

For benchmarks ("an SD1.5-architecture model with random weights") and, on the meta device, for checking
key layouts and shapes of real-size models without allocating their memory.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import torch

from clif_core.models.base import BaseModel
from clif_core.models.clip_bpe import clip_tokenizer
from clif_core.models.families import get_family
from clif_core.models.loader import assemble_base_model, bundled_configs, scheduler_from_config


def build_published_architecture(
    family: str,
    *,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> BaseModel:
    """A model of `family`'s published base architecture with weights drawn from `seed`.

    The weights are created directly on `device` (default CPU; "meta" gives shapes without memory, and an
    empty fingerprint). Random, so its images are noise: use it for speed and memory measurements only.
    """
    return build_random_model(family, bundled_configs(get_family(family).name), seed=seed, device=device, dtype=dtype)


def build_random_model(
    family: str,
    configs: Mapping[str, Mapping[str, Any]],
    *,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> BaseModel:
    """A `family` model of the diffusers `configs` ("unet", "vae", "scheduler" and one per text encoder subfolder)
    with weights drawn from `seed`, created directly on `device` (default CPU) in `dtype` (default float32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = get_family(family)
    target = torch.device(device) if device is not None else torch.device("cpu")
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []), target:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        encoders = []
        for i, sub in enumerate(spec.encoder_subfolders):
            cls = CLIPTextModelWithProjection if spec.name == "sdxl" and i == 1 else CLIPTextModel
            config = {k: v for k, v in configs[sub].items() if k != "architectures"}
            encoders.append(cls(CLIPTextConfig.from_dict(config)))
    return assemble_base_model(
        family=spec.name,
        unet=unet,
        vae=vae,
        scheduler=scheduler_from_config(configs["scheduler"]),
        encoders=encoders,
        tokenizers=[clip_tokenizer(pad) for pad in spec.text_pad_tokens],
        device=target,
        dtype=dtype or torch.float32,
    )
