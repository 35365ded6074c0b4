"""Diffusers/transformers → original single-file layout (LDM for SD1/SD2, SGM for SDXL).

This is the key layout of the checkpoints in ComfyUI's models/checkpoints, which ComfyUI's model detection
reads: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), and the text encoders under
`cond_stage_model.transformer.text_model.*` (SD1, Hugging Face layout), `cond_stage_model.model.*` (SD2,
OpenCLIP layout) or `conditioner.embedders.0.transformer.text_model.*` + `conditioner.embedders.1.model.*`
(SDXL). Reading goes the other way through diffusers' own converters (see `loader.py`); the test suite
checks that writing then reading gives back every tensor bit for bit.

Tensors are not copied where the layout only renames them; OpenCLIP's fused attention input projection
(`in_proj_weight` = q, k, v stacked) and its transposed `text_projection` are new tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from clif_core.models.families import (
    SD1_CLIP_PREFIX,
    SD2_CLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)

if TYPE_CHECKING:
    from .base import BaseModel

Tensors = dict[str, torch.Tensor]

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _move(src: Mapping[str, torch.Tensor], dst: Tensors, old: str, new: str, renames: Mapping[str, str] = {}) -> None:
    """Copy every `old.<rest>` tensor to `new.<rest>`, renaming the first component of <rest> by `renames`."""
    for key, value in src.items():
        if not key.startswith(old + "."):
            continue
        rest = key[len(old) + 1 :]
        for a, b in renames.items():
            if rest.startswith(a + "."):
                rest = b + rest[len(a) :]
                break
        dst[f"{new}.{rest}"] = value


def unet_to_ldm(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Tensors:
    """A diffusers `UNet2DConditionModel` state dict → LDM UNet keys (without the `model.diffusion_model.` prefix).

    LDM numbers its blocks flat: `input_blocks.0` is conv_in, then per down block `layers_per_block`
    (resnet, attention) pairs and a downsampler (except the last block); `output_blocks` likewise with one
    layer more per block and the upsampler after the attention.
    """
    out: Tensors = {}
    n_layers = int(config["layers_per_block"])
    n_blocks = len(config["down_block_types"])
    _move(sd, out, "time_embedding.linear_1", "time_embed.0")
    _move(sd, out, "time_embedding.linear_2", "time_embed.2")
    _move(sd, out, "add_embedding.linear_1", "label_emb.0.0")
    _move(sd, out, "add_embedding.linear_2", "label_emb.0.2")
    _move(sd, out, "conv_in", "input_blocks.0.0")
    _move(sd, out, "conv_norm_out", "out.0")
    _move(sd, out, "conv_out", "out.2")

    index = 1
    for b in range(n_blocks):
        for j in range(n_layers):
            _move(sd, out, f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", _UNET_RESNET)
            _move(sd, out, f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1")
            index += 1
        if f"down_blocks.{b}.downsamplers.0.conv.weight" in sd:
            _move(sd, out, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op")
            index += 1

    _move(sd, out, "mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    _move(sd, out, "mid_block.attentions.0", "middle_block.1")
    _move(sd, out, "mid_block.resnets.1", "middle_block.2", _UNET_RESNET)

    index = 0
    for b in range(len(config["up_block_types"])):
        for j in range(n_layers + 1):
            _move(sd, out, f"up_blocks.{b}.resnets.{j}", f"output_blocks.{index}.0", _UNET_RESNET)
            has_attention = f"up_blocks.{b}.attentions.{j}.proj_in.weight" in sd
            _move(sd, out, f"up_blocks.{b}.attentions.{j}", f"output_blocks.{index}.1")
            if j == n_layers and f"up_blocks.{b}.upsamplers.0.conv.weight" in sd:
                slot = 2 if has_attention else 1
                _move(sd, out, f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{index}.{slot}.conv")
            index += 1
    _check_all_moved(sd, out, "UNet")
    return out


def vae_to_ldm(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Tensors:
    """A diffusers `AutoencoderKL` state dict → LDM VAE keys (without the `first_stage_model.` prefix).

    LDM numbers decoder levels from the lowest resolution up (`decoder.up.0` is the last diffusers up block)
    and keeps the mid-block attention as 1×1 convolutions.
    """
    out: Tensors = {}
    n_blocks = len(config["down_block_types"])
    for part in ("encoder", "decoder"):
        _move(sd, out, f"{part}.conv_in", f"{part}.conv_in")
        _move(sd, out, f"{part}.conv_out", f"{part}.conv_out")
        _move(sd, out, f"{part}.conv_norm_out", f"{part}.norm_out")
        _move(sd, out, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", {"conv_shortcut": "nin_shortcut"})
        _move(sd, out, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", {"conv_shortcut": "nin_shortcut"})
        attention: Tensors = {}
        _move(sd, attention, f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTENTION)
        for key, value in attention.items():
            out[key] = value[:, :, None, None] if value.ndim == 2 else value
    for part in ("quant_conv", "post_quant_conv"):
        _move(sd, out, part, part)
    for i in range(n_blocks):
        for j in range(int(config["layers_per_block"]) + 1):
            _move(sd, out, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", {"conv_shortcut": "nin_shortcut"})
            level = n_blocks - 1 - i
            _move(sd, out, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", {"conv_shortcut": "nin_shortcut"})
        _move(sd, out, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
        _move(sd, out, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{n_blocks - 1 - i}.upsample.conv")
    _check_all_moved(sd, out, "VAE")
    return out


def _text_model_keys(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """transformers ≥ 5.6 saves `CLIPTextModel` without the `text_model.` level; the file layout has it."""
    out: Tensors = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_model.") or key.startswith("text_projection.") or key == "logit_scale":
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_hf_layout(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """A transformers CLIP text encoder state dict → the Hugging Face layout SD1 files use (`text_model.*`)."""
    return {k: v for k, v in _text_model_keys(sd).items() if k.startswith("text_model.")}


def clip_to_open_clip(sd: Mapping[str, torch.Tensor]) -> Tensors:
    """A transformers CLIP text encoder state dict → OpenCLIP's layout (SD2's and SDXL's second encoder).

    OpenCLIP fuses q, k, v into `attn.in_proj_weight`/`in_proj_bias`, names the MLP `c_fc`/`c_proj`, keeps
    the position table as a bare `positional_embedding` parameter, and stores `text_projection` as the matrix
    that multiplies features from the right, i.e. the transpose of the transformers Linear weight.
    """
    src = _text_model_keys(sd)
    out: Tensors = {
        "token_embedding.weight": src["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": src["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": src["text_model.final_layer_norm.weight"],
        "ln_final.bias": src["text_model.final_layer_norm.bias"],
    }
    if "text_projection.weight" in src:
        out["text_projection"] = src["text_projection.weight"].T.contiguous()
    n_layers = 1 + max(int(k.split(".")[3]) for k in src if k.startswith("text_model.encoder.layers."))
    for i in range(n_layers):
        hf = f"text_model.encoder.layers.{i}."
        oc = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[oc + f"attn.in_proj_{kind}"] = torch.cat(
                [src[hf + f"self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            out[oc + f"attn.out_proj.{kind}"] = src[hf + f"self_attn.out_proj.{kind}"]
            out[oc + f"ln_1.{kind}"] = src[hf + f"layer_norm1.{kind}"]
            out[oc + f"ln_2.{kind}"] = src[hf + f"layer_norm2.{kind}"]
            out[oc + f"mlp.c_fc.{kind}"] = src[hf + f"mlp.fc1.{kind}"]
            out[oc + f"mlp.c_proj.{kind}"] = src[hf + f"mlp.fc2.{kind}"]
    return out


def _complete_open_clip_h(sd: Tensors) -> Tensors:
    """Add what SD 2.x files carry beyond what diffusers keeps: OpenCLIP-H's 24th layer and its projection.

    SD 2.x conditions on the penultimate layer of the 24-layer OpenCLIP-H, so diffusers keeps 23 layers and
    drops the rest. ComfyUI builds all 24 and warns about missing weights (leaving them uninitialised). The
    24th layer is written as an exact identity (pre-norm residual block whose output projections are zero),
    text_projection as the identity and logit_scale as CLIP's ln(100); diffusers ignores all three on
    reading, so the round trip stays exact. Only for the published shape (23 layers, width 1024).
    """
    width = sd["token_embedding.weight"].shape[1]
    if width != 1024 or "transformer.resblocks.22.ln_1.weight" not in sd or "transformer.resblocks.23.ln_1.weight" in sd:
        return sd
    ref = sd["transformer.resblocks.22.ln_1.weight"]
    like = lambda *shape: torch.zeros(shape, dtype=ref.dtype, device=ref.device)  # noqa: E731
    out = dict(sd)
    for key, value in sd.items():
        if key.startswith("transformer.resblocks.22."):
            filler = torch.ones_like(value) if key.endswith(("ln_1.weight", "ln_2.weight")) else like(*value.shape)
            out[key.replace("resblocks.22.", "resblocks.23.")] = filler
    out["text_projection"] = torch.eye(width, dtype=ref.dtype, device=ref.device)
    out["logit_scale"] = torch.tensor(4.6052, dtype=ref.dtype, device=ref.device)
    return out


def text_encoders_to_original(family: str, encoders: list[Mapping[str, torch.Tensor]]) -> Tensors:
    """State dicts of a family's text encoders (in order) → their original-layout keys, prefixes included."""
    if family == "sd1":
        return _prefixed(SD1_CLIP_PREFIX, clip_to_hf_layout(encoders[0]))
    if family == "sd2":
        return _prefixed(SD2_CLIP_PREFIX, _complete_open_clip_h(clip_to_open_clip(encoders[0])))
    if family == "sdxl":
        out = _prefixed(SDXL_CLIP_L_PREFIX, clip_to_hf_layout(encoders[0]))
        out.update(_prefixed(SDXL_CLIP_G_PREFIX, clip_to_open_clip(encoders[1])))
        return out
    raise ValueError(f"unknown family {family!r}")


def to_original_state_dict(base: BaseModel) -> Tensors:
    """The whole `BaseModel` (UNet, VAE, text encoders) as one original-layout state dict."""
    out = _prefixed(UNET_PREFIX, unet_to_ldm(base.unet.state_dict(), base.unet.config))
    out.update(_prefixed(VAE_PREFIX, vae_to_ldm(base.vae.state_dict(), base.vae.config)))
    out.update(text_encoders_to_original(base.family, [slot.encoder.state_dict() for slot in base.text]))
    return out


def component_configs(base: BaseModel) -> dict[str, dict]:
    """The diffusers/transformers configs of a `BaseModel`'s components, by diffusers folder name, as JSON
    values (what a single file carries under `clif.diffusers_configs`)."""
    from clif_core.models.families import get_family

    configs = {
        "unet": dict(base.unet.config),
        "vae": dict(base.vae.config),
        "scheduler": {"_class_name": type(base.scheduler).__name__, **dict(base.scheduler.config)},
    }
    for sub, slot in zip(get_family(base.family).encoder_subfolders, base.text):
        configs[sub] = slot.encoder.config.to_dict()
    for config in configs.values():
        config.pop("_name_or_path", None)  # where it was loaded from: a local path, not part of the model
    return json.loads(json.dumps(configs, default=str))


def save_single_file(
    base: BaseModel, path: str | os.PathLike, *, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Write a `BaseModel` as one original-layout .safetensors file (atomically), tensors in their current
    dtype, with its component configs in the metadata so `load_base_model` rebuilds exactly this model
    (sizes, scheduler, prediction type) from the file alone. `metadata` adds more string entries."""
    from clif_core.fileio import save_safetensors_atomic
    from clif_core.models.loader import CONFIGS_METADATA_KEY

    entries = dict(metadata or {})
    entries[CONFIGS_METADATA_KEY] = json.dumps(component_configs(base), sort_keys=True)
    return save_safetensors_atomic(to_original_state_dict(base), path, metadata=entries)


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> Tensors:
    return {prefix + k: v for k, v in sd.items()}


def _check_all_moved(src: Mapping[str, torch.Tensor], out: Tensors, what: str) -> None:
    if len(out) != len(src):
        raise ValueError(
            f"{what} layout conversion mapped {len(out)} of {len(src)} tensors; this diffusers block layout "
            "has no original-layout equivalent"
        )
