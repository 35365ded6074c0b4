"""Tiny SD-shaped fixtures: the right shapes, deterministic from the seed, fast on CPU, standard folders."""

from __future__ import annotations

import pytest
import torch

from clif_core.models.tiny import (
    TINY_IMAGE_SIZE,
    TINY_VAE_SCALE,
    build_tiny_model,
    build_tiny_vision_tower,
    write_tiny_model,
)


def _state(base):
    out = {}
    for name, module in [("unet", base.unet), ("vae", base.vae)] + [(s.name, s.encoder) for s in base.text]:
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return out


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_tiny_model("sd1", seed=5), build_tiny_model("sd1", seed=5), build_tiny_model("sd1", seed=6)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["unet.conv_in.weight"], sc["unet.conv_in.weight"])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    # Building does not disturb the caller's random stream.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_tiny_model("sd1", seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_written_files_are_deterministic(tmp_path):
    first = write_tiny_model("sd1", tmp_path / "a", seed=2)
    second = write_tiny_model("sd1", tmp_path / "b", seed=2)
    assert first.single_file.read_bytes() == second.single_file.read_bytes()
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (first.diffusers_dir / unet).read_bytes() == (second.diffusers_dir / unet).read_bytes()
    again = write_tiny_model("sd1", tmp_path / "a", seed=3)  # overwriting an existing fixture works
    assert again.single_file.read_bytes() != second.single_file.read_bytes()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_shapes(family):
    base = build_tiny_model(family)
    assert sum(p.numel() for p in base.unet.parameters()) < 3_000_000
    cross_attention_levels = [
        i for i, block in enumerate(base.unet.down_blocks) if getattr(block, "has_cross_attention", False)
    ]
    assert cross_attention_levels == [0, 1]
    assert base.vae.config.latent_channels == 4
    assert 2 ** (len(base.vae.config.block_out_channels) - 1) == TINY_VAE_SCALE == 2
    for slot in base.text:
        cfg = slot.encoder.config
        assert cfg.num_hidden_layers == (3 if family == "sdxl" else 2)
        assert 32 <= cfg.hidden_size <= 64 and cfg.vocab_size == 49408
        assert len(slot.tokenizer) == 49408
    assert base.unet.config.cross_attention_dim == sum(s.width for s in base.text)
    if family == "sdxl":
        assert base.unet.config.addition_embed_type == "text_time"
        assert type(base.text[1].encoder).__name__ == "CLIPTextModelWithProjection"
        assert base.unet.config.projection_class_embeddings_input_dim == (
            base.text[1].encoder.config.projection_dim + 6 * base.unet.config.addition_time_embed_dim
        )


def _one_denoise(base, prompt="a photo of a cat"):
    contexts, pooled = [], None
    for slot in base.text:
        ids = slot.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = slot.encoder(ids, output_hidden_states=True)
        contexts.append(out.hidden_states[-2])
        pooled = getattr(out, "text_embeds", None)
    image = torch.rand(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) * 2 - 1
    latent = base.vae.encode(image).latent_dist.sample() * base.vae.config.scaling_factor
    extra = {}
    if base.family == "sdxl":
        sizes = torch.tensor([[TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 0, 0, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE]], dtype=torch.float32)
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": sizes}
    noise_pred = base.unet(latent, torch.tensor([500]), torch.cat(contexts, -1), **extra).sample
    decoded = base.vae.decode(noise_pred / base.vae.config.scaling_factor).sample
    return latent, noise_pred, decoded


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_one_full_pass_at_64px_stays_within_its_flop_budget(family):
    from torch.utils.flop_counter import FlopCounterMode

    base = build_tiny_model(family)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            latent, noise_pred, decoded = _one_denoise(base)
    assert latent.shape == noise_pred.shape == (1, 4, TINY_IMAGE_SIZE // 2, TINY_IMAGE_SIZE // 2)
    assert decoded.shape == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert torch.isfinite(decoded).all()
    # Text encoders + VAE encode + one UNet step + VAE decode: about 2.8 GFLOP (about 0.1 s on an idle
    # 2-core machine). Speed itself is never asserted in tests: the FLOP count is the deterministic budget.
    assert counter.get_total_flops() < 4e9


@pytest.mark.parametrize("family,paired", [("sd1", "clip_l"), ("sdxl", "clip_g")])
def test_vision_tower_matches_the_paired_text_encoder(family, paired, request):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    paths = request.getfixturevalue(f"tiny_{family}")
    vision = CLIPVisionModelWithProjection.from_pretrained(paths.vision_dir, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(paths.vision_dir, local_files_only=True)
    built = build_tiny_vision_tower(family, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(vision.state_dict().values(), built.state_dict().values()))
    base = build_tiny_model(family)
    assert base.text[-1].name == paired
    assert vision.config.projection_dim == base.text[-1].encoder.config.projection_dim
    from PIL import Image

    pixels = processor(images=Image.new("RGB", (90, 70), (200, 30, 30)), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        image_embeds = vision(pixel_values=pixels).image_embeds
    assert image_embeds.shape == (1, vision.config.projection_dim)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_folder_runs_in_diffusers_own_pipeline(family, request):
    from diffusers import DiffusionPipeline

    paths = request.getfixturevalue(f"tiny_{family}")
    pipe = DiffusionPipeline.from_pretrained(paths.diffusers_dir, local_files_only=True)
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    # The pipeline assumes an 8x VAE when it sizes latents; the tiny VAE upsamples by 2, so 64 px → 16.
    assert out.shape[:2] == (1, 3) and torch.isfinite(out).all()
