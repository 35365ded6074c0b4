"""Applying concept files on the diffusers side: tokens, LoRA at a strength, exact undo, real pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from clif_core.concepts import lora_keys
from clif_core.concepts.apply import apply_concepts, expand_prompt, vector_tokens
from clif_core.concepts.exports import export_comfy
from clif_core.errors import ClifError
from clif_core.models.tiny import TINY_IMAGE_SIZE, build_tiny_model
from tests.helpers.concept_files import make_concept_file


def pipeline(base):
    """A stock diffusers pipeline over the base model's components (built after apply: tokenizers change)."""
    if base.family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=base.text[0].encoder, text_encoder_2=base.text[1].encoder,
            tokenizer=base.text[0].tokenizer, tokenizer_2=base.text[1].tokenizer, unet=base.unet,
            scheduler=base.scheduler,
        )
    return StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer, unet=base.unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def render(base, prompt: str) -> np.ndarray:
    pipe = pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=1, guidance_scale=3.0, height=TINY_IMAGE_SIZE, width=TINY_IMAGE_SIZE,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images[0]


def encode(slot, prompt: str) -> torch.Tensor:
    ids = slot.tokenizer(prompt, padding="max_length", max_length=slot.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return slot.encoder(ids).last_hidden_state


def unet_out(base, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    ctx = torch.randn(1, 7, base.unet.config.cross_attention_dim, generator=gen)
    kwargs = {}
    if base.family == "sdxl":
        pooled = base.slot("clip_g").encoder.config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return base.unet(x, torch.tensor([500]), ctx, **kwargs).sample


# ------------------------------------------------------------------------------------------ prompts


def test_expand_prompt():
    tokens = {"<alice>": vector_tokens("<alice>", 3), "<bob>": ["<bob>"]}
    assert expand_prompt("<alice> and <bob>, <alice>'s hat", tokens) == (
        "<alice> <alice>_1 <alice>_2 and <bob>, <alice> <alice>_1 <alice>_2's hat"
    )
    once = expand_prompt("<alice>, <alice> <alice>_1 <alice>_2", tokens)
    assert once == "<alice> <alice>_1 <alice>_2, <alice> <alice>_1 <alice>_2" == expand_prompt(once, tokens)
    assert expand_prompt("a cat <lora:style:0.8>", tokens) == "a cat <lora:style:0.8>"
    with pytest.raises(ClifError, match="uses <alcie>, .*loaded placeholders: <alice>, <bob>"):
        expand_prompt("<alcie> at the beach", tokens)
    with pytest.raises(ClifError, match="loaded placeholders: none"):
        expand_prompt("<carol>", {})


# ------------------------------------------------------------------------------------------ apply / remove


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tokens_are_added_to_every_encoder_and_removed_exactly(family):
    base = build_tiny_model(family, 0)
    cf = make_concept_file(base, text_lora=False, unet_targets=())
    originals = [(s.tokenizer, s.encoder.get_input_embeddings()) for s in base.text]
    before = {s.name: (encode(s, "a photo of <alice>"), encode(s, "a photo of a dog")) for s in base.text}

    applied = apply_concepts(base, [(cf, 1.0)])
    prompt = applied.expand_prompt("a photo of <alice>")
    assert prompt == "a photo of <alice> <alice>_1"
    for slot in base.text:
        n = originals[0][1].num_embeddings
        ids = slot.tokenizer(prompt, add_special_tokens=False).input_ids
        assert ids[-2:] == [n, n + 1]
        table = slot.encoder.get_input_embeddings().weight
        assert torch.equal(table[n : n + 2], cf.concepts[0].embeddings[slot.name])
        assert torch.equal(table[n + 2 : n + 4], cf.concepts[1].embeddings[slot.name])
        with_tokens = encode(slot, prompt)
        assert not torch.allclose(with_tokens, before[slot.name][0], atol=1e-3)  # the concept changes the text
        assert torch.equal(encode(slot, "a photo of a dog"), before[slot.name][1])  # other prompts untouched

    applied.remove()
    for slot, (tokenizer, table) in zip(base.text, originals):
        assert slot.tokenizer is tokenizer and slot.encoder.get_input_embeddings() is table
        assert torch.equal(encode(slot, "a photo of <alice>"), before[slot.name][0])
    applied.remove()  # idempotent


def test_lora_at_a_strength_matches_the_manual_weight_update():
    base = build_tiny_model("sd1", 0)
    cf = make_concept_file(base)
    before = unet_out(base)
    strength = 0.5
    with apply_concepts(base, [(cf, strength)]) as applied:
        assert applied.adapters == {"clif_0": 0.5}
        for model, prefix, lora in ((base.unet, "lora_unet", cf.unet_lora),
                                    (base.slot("clip_l").encoder, "lora_te", cf.text_lora)):
            targets = lora_keys.UNET_LORA_TARGETS if prefix == "lora_unet" else lora_keys.TEXT_LORA_TARGETS
            checked = 0
            for name, kohya, layer in lora_keys.target_modules(model, prefix, targets):
                if kohya + ".alpha" not in lora:
                    continue
                down, up = lora[kohya + ".lora_down.weight"], lora[kohya + ".lora_up.weight"]
                scale = strength * lora[kohya + ".alpha"].item() / down.shape[0]
                weight = layer.weight + scale * (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape)
                x = torch.randn(2, layer.weight.shape[1], *([4, 4] if layer.weight.dim() == 4 else []))
                module = model.get_submodule(name)
                with torch.no_grad():
                    if layer.weight.dim() == 4:
                        expected = torch.nn.functional.conv2d(x, weight, layer.bias, layer.stride, layer.padding)
                    else:
                        expected = torch.nn.functional.linear(x, weight, layer.bias)
                    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)
                checked += 1
            assert checked == len(lora_keys.lora_modules(lora))
        assert not torch.allclose(unet_out(base), before, atol=1e-3)
    assert torch.equal(unet_out(base), before)


def test_two_files_with_their_own_strengths_and_zero_strength_skips_the_lora():
    base = build_tiny_model("sd1", 0)
    a = make_concept_file(base, seed=1, names=("alice",))
    b = make_concept_file(base, seed=2, names=("bob",), text_lora=False)
    with apply_concepts(base, [(a, 1.0), (b, 0.0)]) as applied:
        assert applied.adapters == {"clif_0": 1.0}
        assert sorted(applied.tokens) == ["<alice>", "<bob>"]
    with apply_concepts(base, [(a, 1.0), (b, 0.7)]) as applied:
        layer = base.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
        assert layer.active_adapters == ["clif_0", "clif_1"] and layer.scaling["clif_1"] == pytest.approx(0.7 * 2 / 4)


def test_refusals_leave_the_base_untouched():
    base = build_tiny_model("sd1", 0)
    before = unet_out(base)
    tokenizer = base.text[0].tokenizer
    cf = make_concept_file(base)
    first = apply_concepts(base, [(cf, 1.0)])
    with pytest.raises(ClifError, match="'<alice>' of concept 'alice' is already a token .*already applied"):
        apply_concepts(base, [(cf, 1.0)])
    first.remove()
    with pytest.raises(ClifError, match="'<alice>' is defined by two applied concept files"):
        apply_concepts(base, [(cf, 1.0), (make_concept_file(base, seed=3), 1.0)])
    with pytest.raises(ClifError, match="made for a sdxl model"):
        apply_concepts(base, [(make_concept_file(build_tiny_model("sdxl", 0)), 1.0)])
    from peft import LoraConfig

    base.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), adapter_name="user")
    with pytest.raises(ClifError, match="unet already carries LoRA adapters"):
        apply_concepts(base, [(cf, 1.0)])
    base.unet.delete_adapters("user")
    assert base.text[0].tokenizer is tokenizer and len(tokenizer) == 49408
    assert base.text[0].encoder.get_input_embeddings().num_embeddings == 49408
    assert torch.equal(unet_out(base), before)


def test_legacy_eos_id_pools_at_the_end_token_not_at_an_added_token():
    base = build_tiny_model("sd1", 0)
    encoder = base.text[0].encoder
    encoder.eos_token_id = 2  # as in configs converted before transformers fixed CLIP's eos_token_id
    with apply_concepts(base, [(make_concept_file(base, text_lora=False), 1.0)]) as applied:
        slot = base.text[0]
        ids = slot.tokenizer(applied.expand_prompt("<alice> at home"), return_tensors="pt").input_ids
        with torch.no_grad():
            out = slot.encoder(ids)
        eos = int((ids[0] == slot.tokenizer.eos_token_id).nonzero()[0])
        assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, eos])
    assert encoder.eos_token_id == 2


# ------------------------------------------------------------------------------------------ real pipelines


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_pipeline_renders_the_concepts_and_renders_as_before_after_remove(family):
    base = build_tiny_model(family, 0)
    cf = make_concept_file(base)
    prompt = "a photo of <alice> and <bob>"
    plain = render(base, prompt)
    with apply_concepts(base, [(cf, 1.0)]) as applied:
        # diffusers pipelines expand multi-vector tokens themselves, with the same naming as expand_prompt
        pipe = pipeline(base)
        for slot_tokenizer in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)):
            if slot_tokenizer is not None:
                assert pipe.maybe_convert_prompt(prompt, slot_tokenizer) == applied.expand_prompt(prompt)
        with_concepts = render(base, prompt)
    assert np.abs(with_concepts - plain).max() > 1e-3
    assert np.array_equal(render(base, prompt), plain)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_exports_load_in_stock_diffusers_and_match_apply_concepts(family, tmp_path):
    theirs = build_tiny_model(family, 0)
    cf = make_concept_file(theirs)
    lora_path, *embedding_paths = export_comfy(cf, tmp_path / "emb", tmp_path / "lora", "set")

    pipe = pipeline(theirs)
    pipe.load_lora_weights(str(lora_path), adapter_name="set")
    for concept, path in zip(cf.concepts, embedding_paths):
        if family == "sdxl":
            from safetensors.torch import load_file

            sd = load_file(str(path))
            pipe.load_textual_inversion(sd["clip_l"], token=concept.token, text_encoder=pipe.text_encoder,
                                        tokenizer=pipe.tokenizer)
            pipe.load_textual_inversion(sd["clip_g"], token=concept.token, text_encoder=pipe.text_encoder_2,
                                        tokenizer=pipe.tokenizer_2)
        else:
            pipe.load_textual_inversion(str(path), token=concept.token)
    prompt = "<bob> and <alice> in the snow"
    with torch.no_grad():
        theirs_embeds = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)[0]
    theirs_unet = unet_out(theirs)

    ours = build_tiny_model(family, 0)
    with apply_concepts(ours, [(cf, 1.0)]):
        pipe_ours = pipeline(ours)
        with torch.no_grad():
            ours_embeds = pipe_ours.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)[0]
        torch.testing.assert_close(ours_embeds, theirs_embeds, rtol=0, atol=1e-6)
        torch.testing.assert_close(unet_out(ours), theirs_unet, rtol=0, atol=1e-6)

    # diffusers' fused weights are exactly W + alpha/r * up @ down
    base_weights = {name: layer.weight.detach().clone()
                    for name, _, layer in lora_keys.target_modules(ours.unet, "lora_unet", lora_keys.UNET_LORA_TARGETS)}
    pipe.fuse_lora()
    for name, kohya, layer in lora_keys.target_modules(theirs.unet, "lora_unet", lora_keys.UNET_LORA_TARGETS):
        if kohya + ".alpha" in cf.unet_lora:
            down, up = cf.unet_lora[kohya + ".lora_down.weight"], cf.unet_lora[kohya + ".lora_up.weight"]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(layer.weight.shape)
            expected = base_weights[name] + cf.unet_lora[kohya + ".alpha"].item() / down.shape[0] * delta
            torch.testing.assert_close(layer.weight, expected, rtol=0, atol=1e-6)
