"""The core sampler on tiny models: determinism, parity with diffusers' own pipelines, concepts, errors, cancel."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from clif_core.concepts.merged import apply_merged
from clif_core.errors import Cancelled, ClifError
from clif_core.models.tiny import TINY_IMAGE_SIZE
from clif_core.models.vae import vae_factor
from clif_core.progress import Reporter
from clif_core.sample.config import SCHEDULERS, SampleConfig
from clif_core.sample.recipe import concept_file_fingerprint
from clif_core.sample.sampler import (
    ConceptUse,
    image_size,
    make_generate,
    sample,
)
from clif_core.sample.schedulers import make_scheduler
from tests.helpers.concept_files import make_concept_file

PROMPT = "a photo of a red dog on a table"


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in result.images])


def untouched(base) -> bool:
    """No concept tokens and no LoRA layers left on the base model."""
    sizes = {s.name: s.encoder.get_input_embeddings().num_embeddings for s in base.text}
    return all(n == 49408 for n in sizes.values()) and not any(
        getattr(m, "peft_config", None) for m in [base.unet, *(s.encoder for s in base.text)]
    )


def pipeline(base, scheduler: str):
    common = {"vae": base.vae, "unet": base.unet, "scheduler": make_scheduler(base.scheduler.config, scheduler)}
    if base.family == "sdxl":
        pipe = StableDiffusionXLPipeline(text_encoder=base.text[0].encoder, text_encoder_2=base.text[1].encoder,
                                         tokenizer=base.text[0].tokenizer, tokenizer_2=base.text[1].tokenizer,
                                         **common)
    else:
        pipe = StableDiffusionPipeline(text_encoder=base.text[0].encoder, tokenizer=base.text[0].tokenizer,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                       **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_same_seed_same_images_and_another_seed_differs(sd1):
    config = SampleConfig(PROMPT, seed=11, steps=2, cfg=5.0, scheduler="euler_a")
    first, again = sample(sd1, config), sample(sd1, config)
    assert np.array_equal(pixels(first), pixels(again))
    assert torch.equal(first.latents, again.latents)
    other = sample(sd1, dataclasses.replace(config, seed=12))
    assert np.abs(pixels(other) - pixels(first)).mean() > 1.0


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_matches_stable_diffusion_pipeline(sd1, scheduler):
    config = SampleConfig(PROMPT, negative_prompt="blurry", seed=5, steps=3, cfg=6.0, scheduler=scheduler, batch=2)
    ours = sample(sd1, config)
    pipe = pipeline(sd1, scheduler)
    theirs = pipe(PROMPT, negative_prompt="blurry", num_inference_steps=3, guidance_scale=6.0, height=TINY_IMAGE_SIZE,
                  width=TINY_IMAGE_SIZE, num_images_per_prompt=2, output_type="latent",
                  generator=[torch.Generator().manual_seed(5 + i) for i in range(2)]).images
    torch.testing.assert_close(ours.latents, theirs.float(), rtol=1e-5, atol=1e-5)
    # Images: the pipeline's float output quantised like ours differs by at most one level (rounding).
    decoded = pipe.vae.decode(theirs / pipe.vae.config.scaling_factor).sample
    reference = pipe.image_processor.postprocess(decoded, output_type="np")
    assert np.abs(pixels(ours) / 255.0 - reference).max() <= 1.0 / 255 + 1e-6


def test_without_guidance_matches_the_pipeline_too(sd1):
    ours = sample(sd1, SampleConfig(PROMPT, seed=2, steps=2, cfg=1.0))
    theirs = pipeline(sd1, "euler")(PROMPT, num_inference_steps=2, guidance_scale=1.0, height=TINY_IMAGE_SIZE,
                                    width=TINY_IMAGE_SIZE, output_type="latent",
                                    generator=torch.Generator().manual_seed(2)).images
    torch.testing.assert_close(ours.latents, theirs.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sdxl_matches_stable_diffusion_xl_pipeline(sdxl, negative):
    config = SampleConfig(PROMPT, negative_prompt=negative, seed=3, steps=2, cfg=5.0, scheduler="dpmpp_2m_karras")
    ours = sample(sdxl, config)
    theirs = pipeline(sdxl, "dpmpp_2m_karras")(
        PROMPT, negative_prompt=negative or None, num_inference_steps=2, guidance_scale=5.0, height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE, output_type="latent", generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(ours.latents, theirs.float(), rtol=1e-5, atol=1e-5)
    assert ours.images[0].size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(sd1):
    batch = sample(sd1, SampleConfig(PROMPT, seed=20, steps=2, scheduler="euler_a", batch=3))
    recipe = batch.image_recipe(2)
    assert recipe["seed"] == 22 and recipe["batch"] == 1
    single = sample(sd1, SampleConfig(PROMPT, seed=recipe["seed"], steps=2, scheduler="euler_a"))
    # Batched and single convolutions round differently; the tiny random UNet amplifies that a little.
    torch.testing.assert_close(batch.latents[2:], single.latents, rtol=0, atol=1e-3)
    assert np.abs(pixels(batch)[2] - pixels(single)[0]).max() <= 1


def test_make_generate_gives_n_images_independent_of_chunking(sd1):
    template = SampleConfig("", steps=2, cfg=4.0)
    in_twos = make_generate(sd1, template, max_batch=2)("a photo of a chef", 3, 8)
    at_once = make_generate(sd1, template, max_batch=3)("a photo of a chef", 3, 8)
    assert len(in_twos) == 3 and all(im.size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE) for im in in_twos)
    for a, b in zip(in_twos, at_once):
        assert np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max() <= 1
    assert np.abs(np.asarray(in_twos[0], dtype=np.int16) - np.asarray(in_twos[1], dtype=np.int16)).mean() > 1.0


def test_concept_file_changes_the_output_and_is_removed_afterwards(sd1):
    cf = make_concept_file(sd1, seed=4)
    config = SampleConfig("a photo of <alice> on the left and <bob> on the right", seed=1, steps=2)
    plain_prompt = dataclasses.replace(config, prompt="a photo of a person")
    before = sample(sd1, plain_prompt)
    with_lora = sample(sd1, plain_prompt, [ConceptUse(cf, 1.0, "alice_bob.safetensors")])
    assert np.abs(pixels(with_lora) - pixels(before)).mean() > 1.0  # the LoRA alone
    tokens_only = sample(sd1, config, [(cf, 0.0)])
    half = sample(sd1, config, [(cf, 0.5)])
    assert np.abs(pixels(half) - pixels(tokens_only)).mean() > 1.0  # the strength matters
    assert untouched(sd1)
    assert torch.equal(sample(sd1, plain_prompt).latents, before.latents)  # the base computes as before
    [entry] = with_lora.recipe["concepts"]
    assert entry["strength"] == 1.0 and entry["path"] == "alice_bob.safetensors"
    assert entry["tokens"] == ["<alice>", "<bob>"] and len(entry["fingerprint"]) == 16


def test_concept_placeholders_render_like_the_applied_pipeline(sd1):
    """The sampler resolves "<alice>" to the same tokens diffusers' pipeline sees after the concepts are applied
    as the sampler applies them (LoRA merged into the weights; tests/test_sample_merged.py checks that the
    merged LoRA computes what peft's live adapters compute)."""
    cf = make_concept_file(sd1, seed=6, text_lora=False)
    prompt = "a photo of <alice> with <bob>"
    ours = sample(sd1, SampleConfig(prompt, seed=4, steps=2, cfg=3.0), [(cf, 0.7)])
    with apply_merged(sd1, [(cf, 0.7)], [concept_file_fingerprint(cf)]):
        theirs = pipeline(sd1, "euler")(prompt, num_inference_steps=2, guidance_scale=3.0, height=TINY_IMAGE_SIZE,
                                         width=TINY_IMAGE_SIZE, output_type="latent",
                                         generator=torch.Generator().manual_seed(4)).images
    torch.testing.assert_close(ours.latents, theirs.float(), rtol=1e-5, atol=1e-5)


def test_erasure_patch_and_concept_file_apply_together(sd1):
    concepts = make_concept_file(sd1, seed=4, text_lora=False)
    patch = dataclasses.replace(make_concept_file(sd1, seed=9, names=(), text_lora=False), kind="erasure",
                                title="erase dogs", metadata={"erased": [{"target": "dog", "alternative": None}]})
    config = SampleConfig("a photo of <alice> and a dog", seed=1, steps=2)
    only_concepts = sample(sd1, config, [concepts])
    both = sample(sd1, config, [concepts, (patch, 1.0)])
    assert np.abs(pixels(both) - pixels(only_concepts)).mean() > 1.0
    assert [c["kind"] for c in both.recipe["concepts"]] == ["concepts", "erasure"]
    assert untouched(sd1)


def test_unknown_placeholder_is_a_clear_error_and_nothing_is_applied(sd1):
    cf = make_concept_file(sd1, seed=4)
    with pytest.raises(ClifError, match=r"prompt: .*<carol>.*loaded placeholders: <alice>, <bob>"):
        sample(sd1, SampleConfig("<carol> at the beach", steps=1), [cf])
    with pytest.raises(ClifError, match=r"negative prompt: .*<carol>.*loaded placeholders: none"):
        sample(sd1, SampleConfig("a beach", negative_prompt="<carol>", steps=1))
    assert untouched(sd1)


def test_cancel_stops_between_steps_and_restores_the_base(sd1):
    cf = make_concept_file(sd1, seed=4)
    seen: list[int] = []
    reporter = Reporter(progress=lambda step, total, preview=None: seen.append(step),
                        should_stop=lambda: len(seen) >= 2, log=lambda m: None)
    with pytest.raises(Cancelled):
        sample(sd1, SampleConfig("<alice>", steps=10), [cf], reporter)
    assert seen == [1, 2]
    assert untouched(sd1)


def test_progress_and_previews_reach_the_reporter(sd1):
    calls: list[tuple[int, int, object]] = []
    reporter = Reporter(progress=lambda step, total, preview=None: calls.append((step, total, preview)),
                        log=lambda m: None)
    sample(sd1, SampleConfig(PROMPT, steps=5, preview_every=2, scheduler="ddim"), reporter=reporter)
    assert [(s, t) for s, t, _ in calls] == [(i, 5) for i in range(1, 6)]
    with_preview = [s for s, _, p in calls if p is not None]
    assert with_preview == [2, 4, 5]  # every second step and the last
    assert calls[1][2].size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    seen = []
    sample(sd1, SampleConfig(PROMPT, steps=2, preview_every=1), previewer=lambda x: seen.append(tuple(x.shape)) or "p")
    assert seen == [(1, 4, TINY_IMAGE_SIZE // 2, TINY_IMAGE_SIZE // 2)] * 2


def test_sizes_follow_the_vae_factor(sd1):
    assert vae_factor(sd1) == 2
    published = SimpleNamespace(config=SimpleNamespace(block_out_channels=[128, 256, 512, 512]))
    assert vae_factor(SimpleNamespace(vae=published)) == 8
    assert image_size(sd1, SampleConfig("x")) == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)  # native size
    result = sample(sd1, SampleConfig(PROMPT, steps=1, width=48, height=34))
    assert result.images[0].size == (48, 34) and tuple(result.latents.shape[-2:]) == (17, 24)
    with pytest.raises(ClifError, match="width 63 is not a positive multiple of 2"):
        sample(sd1, SampleConfig(PROMPT, steps=1, width=63))


@pytest.mark.parametrize("field, value, message", [
    ("scheduler", "heun", "scheduler 'heun' is not supported"),
    ("steps", 0, "steps is 0"),
    ("batch", 0, "batch is 0"),
    ("cfg", float("nan"), "cfg is nan"),
    ("seed", -1, "seed is -1"),
])
def test_bad_settings_are_refused_naming_the_field(sd1, field, value, message):
    with pytest.raises(ClifError, match=message):
        sample(sd1, dataclasses.replace(SampleConfig(PROMPT, steps=1), **{field: value}))
