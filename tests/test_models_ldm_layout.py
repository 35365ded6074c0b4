"""diffusers → original single-file layout → diffusers is exact, for tiny and real-size architectures."""

from __future__ import annotations

import pytest
import torch

from clif_core.models.families import FAMILIES
from clif_core.models.ldm_layout import component_configs, to_original_state_dict
from clif_core.models.loader import assemble_base_model, components_from_original
from clif_core.models.random_model import build_published_architecture
from clif_core.models.tiny import build_tiny_model


def _modules(base):
    return [("unet", base.unet), ("vae", base.vae)] + [(s.name, s.encoder) for s in base.text]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_round_trip_is_bit_exact(family):
    base = build_tiny_model(family, seed=3)
    state = to_original_state_dict(base)
    back = assemble_base_model(**components_from_original(state, family, component_configs(base)))
    for (name, a), (_, b) in zip(_modules(base), _modules(back), strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys(), name
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert back.fingerprint == base.fingerprint


def _real_file_extras(family, state):
    """Keys that published single files carry besides the weights the diffusers components use."""
    meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    extras = {"alphas_cumprod": meta(1000), "betas": meta(1000), "model_ema.decay": meta()}
    if family == "sd1":
        extras["cond_stage_model.transformer.text_model.embeddings.position_ids"] = meta(1, 77)
    if family == "sd2":  # the 24-layer OpenCLIP-H is already complete in what we write
        assert "cond_stage_model.model.transformer.resblocks.23.ln_1.weight" in state
    if family == "sdxl":
        extras["conditioner.embedders.1.model.logit_scale"] = meta()
    return extras


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_real_size_layout_round_trips_key_for_key(family):
    base = build_published_architecture(family, device="meta")
    state = to_original_state_dict(base)
    state.update(_real_file_extras(family, state))
    back = components_from_original(state, family)
    originals = dict(_modules(base))
    rebuilt = [("unet", back["unet"]), ("vae", back["vae"])]
    rebuilt += list(zip(FAMILIES[family].text_slots, back["encoders"]))
    for name, module in rebuilt:
        expect = {k: tuple(v.shape) for k, v in originals[name].state_dict().items()}
        got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert got == expect, name


@pytest.mark.parametrize("family,diffusers_type", [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_diffusers_recognises_the_written_layout(family, diffusers_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    state = to_original_state_dict(build_published_architecture(family, device="meta"))
    assert infer_diffusers_model_type(state) == diffusers_type


KNOWN_KEYS = {
    "sd1": {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.self_attn.q_proj.weight": (768, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    },
    "sd2": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.transformer.resblocks.22.mlp.c_fc.weight": (4096, 1024),
        "cond_stage_model.model.ln_final.weight": (1024,),
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.text_projection": (1024, 1024),
    },
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.label_emb.0.2.weight": (1280, 1280),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.ff.net.0.proj.weight": (10240, 1280),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    },
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_written_keys_are_the_published_checkpoint_keys(family):
    state = to_original_state_dict(build_published_architecture(family, device="meta"))
    for key, shape in KNOWN_KEYS[family].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert not any(k.endswith("position_ids") for k in state)


def test_open_clip_attention_and_projection_are_fused_and_transposed():
    base = build_tiny_model("sdxl", seed=1)
    enc = base.slot("clip_g").encoder
    state = to_original_state_dict(base)
    attn = enc.text_model.encoder.layers[1].self_attn
    fused = state["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(fused, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    projection = state["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(projection, enc.text_projection.weight.T)
    # OpenCLIP computes pooled @ text_projection; transformers computes text_projection(pooled).
    pooled = torch.randn(2, enc.config.hidden_size)
    assert torch.allclose(pooled @ projection, enc.text_projection(pooled), atol=1e-5)


def test_saved_single_file_rebuilds_the_model_with_its_own_configs(tiny_sd2, tmp_path):
    from clif_core.models.ldm_layout import save_single_file
    from clif_core.models.loader import load_base_model

    base = load_base_model(tiny_sd2.diffusers_dir, device="cpu", prediction_type="epsilon")
    path = save_single_file(base, tmp_path / "out.safetensors", metadata={"modelspec.title": "tiny"})
    back = load_base_model(path, device="cpu")
    assert back.prediction_type == "epsilon"  # the family default (v) would be wrong for this model
    assert back.fingerprint == base.fingerprint
    for (name, a), (_, b) in zip(_modules(base), _modules(back), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), name


def test_cli_writes_tiny_model_converts_and_inspects(tmp_path, capsys):
    from clif_core.cli import main

    assert main(["model", "tiny", "sd1", str(tmp_path / "tiny"), "--seed", "4"]) == 0
    out = tmp_path / "converted.safetensors"
    assert main(["model", "to-single-file", str(tmp_path / "tiny" / "diffusers"), str(out), "--half"]) == 0
    capsys.readouterr()
    assert main(["model", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "family: sd1" in printed and f"fingerprint: {build_tiny_model('sd1', seed=4).fingerprint}" in printed
    assert main(["model", "to-single-file", str(out), str(tmp_path / "x.ckpt")]) == 2


def test_sd2_files_get_an_exact_identity_24th_layer():
    from transformers import CLIPTextConfig
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    from clif_core.models.ldm_layout import _complete_open_clip_h

    torch.manual_seed(0)
    layer22 = {
        "attn.in_proj_weight": (3072, 1024), "attn.in_proj_bias": (3072,), "attn.out_proj.weight": (1024, 1024),
        "attn.out_proj.bias": (1024,), "ln_1.weight": (1024,), "ln_1.bias": (1024,), "ln_2.weight": (1024,),
        "ln_2.bias": (1024,), "mlp.c_fc.weight": (4096, 1024), "mlp.c_fc.bias": (4096,),
        "mlp.c_proj.weight": (1024, 4096), "mlp.c_proj.bias": (1024,),
    }
    written = {"token_embedding.weight": torch.randn(8, 1024)}
    written.update({f"transformer.resblocks.22.{k}": torch.randn(shape) for k, shape in layer22.items()})
    done = _complete_open_clip_h(written)
    assert torch.equal(done["text_projection"], torch.eye(1024))
    filler = {k[len("transformer.resblocks.23."):]: v for k, v in done.items() if k.startswith("transformer.resblocks.23.")}
    assert filler.keys() == layer22.keys()

    config = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, hidden_act="gelu")
    layer = CLIPEncoderLayer(config).eval()
    q, k, v = filler["attn.in_proj_weight"].chunk(3)
    qb, kb, vb = filler["attn.in_proj_bias"].chunk(3)
    layer.load_state_dict({
        "self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
        "self_attn.q_proj.bias": qb, "self_attn.k_proj.bias": kb, "self_attn.v_proj.bias": vb,
        "self_attn.out_proj.weight": filler["attn.out_proj.weight"], "self_attn.out_proj.bias": filler["attn.out_proj.bias"],
        "layer_norm1.weight": filler["ln_1.weight"], "layer_norm1.bias": filler["ln_1.bias"],
        "layer_norm2.weight": filler["ln_2.weight"], "layer_norm2.bias": filler["ln_2.bias"],
        "mlp.fc1.weight": filler["mlp.c_fc.weight"], "mlp.fc1.bias": filler["mlp.c_fc.bias"],
        "mlp.fc2.weight": filler["mlp.c_proj.weight"], "mlp.fc2.bias": filler["mlp.c_proj.bias"],
    })
    hidden = torch.randn(2, 7, 1024)
    with torch.no_grad():
        out = layer(hidden, attention_mask=None, causal_attention_mask=None)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.equal(out, hidden)
    # Tiny SD2-shaped encoders are written as they are.
    tiny = {"token_embedding.weight": torch.zeros(8, 32), "transformer.resblocks.1.ln_1.weight": torch.ones(32)}
    assert _complete_open_clip_h(tiny) is tiny
