"""Runs inside one ComfyUI version's Python environment (see rig.comfy_subprocess_env): exercises every
function of nodes/comfy_compat.py against that ComfyUI's own classes and prints the findings as JSON.

    python compat_probe.py

The test (tests/test_comfy_compat.py) judges the findings.
"""

from __future__ import annotations

import json
import types

import torch
from pack_modules import pack_module  # this script's folder is sys.path[0]


def main() -> dict:
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management looks for a GPU
    import comfy.ldm.modules.diffusionmodules.model as blocks
    import comfy.model_base
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models

    compat = pack_module("comfy_compat")
    from clif_core.errors import ClifError

    found: dict = {"version": compat.comfyui_version()}

    config = comfy.supported_models.SD15({"context_dim": 32, "model_channels": 32, "use_linear_in_transformer": False,
                                          "adm_in_channels": None, "use_temporal_attention": False})
    config.set_inference_dtype(torch.float32, None)
    ops = compat.unet_operations(config, 4)
    found["unet_group_norm_groups"] = ops.GroupNorm(32, 8).num_groups
    found["unet_linear_is_comfy_op"] = issubclass(ops.Linear, torch.nn.Linear) and ops.Linear is not torch.nn.Linear

    original_ops = blocks.ops
    with compat.vae_group_norm(4):
        found["vae_group_norm_groups"] = blocks.Normalize(8).num_groups
    found["vae_ops_restored"] = blocks.ops is original_ops

    holder = types.SimpleNamespace(embedder=comfy.model_base.Timestep(256))
    compat.set_size_embedding_width(holder, 64)
    found["size_embedding_width"] = holder.embedder.dim

    tokenizer = comfy.sd1_clip.SD1Tokenizer(embedding_directory=None, tokenizer_data={})
    compat.set_embedding_width(tokenizer, "clip_l", 32)
    found["embedding_size"] = tokenizer.clip_l.embedding_size
    vector = torch.arange(64, dtype=torch.float32).reshape(2, 32)
    patched = compat.with_memory_embeddings(tokenizer, {"<alice>": {"clip_l": vector}})
    tokens = patched.tokenize_with_weights("a photo of embedding:<alice> on a hill")["l"][0]
    rows = [t for t, _w, *_ in tokens if isinstance(t, torch.Tensor)]
    found["memory_embedding_rows"] = [row.tolist() for row in rows]
    found["vector"] = vector.tolist()
    found["original_untouched"] = (tokenizer.clip_l.embedding_directory is None
                                   and "_try_get_embedding" not in vars(tokenizer.clip_l))

    # ComfyUI's own VAE class built from a config (small widths): 4 channels, its default 8 px per latent cell
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    with compat.vae_group_norm(4):
        vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": ddconfig, "embed_dim": 4}})
    found["vae_latent_layout"] = list(compat.vae_latent_layout(vae))
    try:
        compat.vae_latent_layout(types.SimpleNamespace(latent_dim=3, downscale_ratio=(4, 8, 8), latent_channels=16))
    except ClifError as err:
        found["video_vae_refusal"] = str(err)

    try:
        compat.with_memory_embeddings(types.SimpleNamespace(), {})
    except ClifError as err:
        found["refusal"] = str(err)
    return found


if __name__ == "__main__":
    print(json.dumps(main()))
