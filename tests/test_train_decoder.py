"""Stage 2 on tiny models: the loss on a fixed batch falls, the trained concept tokens change the UNet output,
the final file applies like any concept file and the base model is left bit-identical; bit-identical resume
of a real stage; a diverging run stops with its checkpoint kept and no file; the options (masked loss,
min-SNR, noise offset, prior preservation, v-prediction, SDXL, a stage-1 start)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.concepts.lora_keys import lora_modules
from clif_core.errors import Cancelled, ClifError
from clif_core.models.loader import load_base_model
from clif_core.models.prompts import unet_conditioning
from clif_core.progress import Reporter
from clif_core.train.contrastive import ContrastiveConfig, train_contrastive
from clif_core.train.decoder import train_decoder
from clif_core.training.loop import LoopConfig
from clif_core.training.run_folder import RunFolder
from tests.helpers.datasets import make_dataset
from tests.helpers.train_configs import stage2_config
from tests.helpers.weights import snapshot_base

QUIET = Reporter(log=lambda m: None)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One fixed batch: "a photo of <alice>" and "a photo of <bob>" at 32 px (16 x 16 latents, a quarter of
    the tiny models' native size, keeps each step fast on CPU)."""
    return make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob", resolution=32, n_global=0, n_region=0,
                        n_mix=0, n_single=2)


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_base_model(tiny_sd1.diffusers_dir)


@torch.no_grad()
def unet_output(base, prompt: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    context, _ = unet_conditioning(base, [prompt], base.device, (32, 32))
    return base.unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


def test_stage2_learns_and_its_concept_tokens_change_the_unet_output(sd1, dataset, tmp_path):
    before_state = snapshot_base(sd1)
    result = train_decoder(sd1, dataset, tmp_path / "run", stage2_config(), reporter=QUIET)
    fixed = result.metrics["fixed_batch_loss"]
    assert fixed["after"] < 0.85 * fixed["before"]
    after_state = snapshot_base(sd1)
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)  # base restored exactly

    cf = load_concept_file(result.path, base=sd1)
    assert cf.unet_lora and all(k.startswith("lora_unet_") for k in cf.unet_lora)
    assert all(m.endswith(("_to_q", "_to_k", "_to_v", "_to_out_0")) for m in lora_modules(cf.unet_lora))
    assert cf.recipe["stage2"]["stage"] == "decoder"
    alice, bob = cf.concepts
    assert not torch.equal(alice.embeddings["clip_l"], bob.embeddings["clip_l"])  # both began as "person"
    with apply_concepts(sd1, [(cf, 1.0)]) as applied:
        a = unet_output(sd1, applied.expand_prompt("a photo of <alice>"))
        b = unet_output(sd1, applied.expand_prompt("a photo of <bob>"))
    assert (a - b).abs().max() > 1e-3  # the concept token changes the UNet's prediction
    plain = unet_output(sd1, "a photo of a person")
    assert torch.equal(plain, unet_output(sd1, "a photo of a person"))


def test_stage2_resume_is_bit_identical(sd1, dataset, tmp_path):
    config = stage2_config(steps=6, checkpoint_every=2)
    whole = train_decoder(sd1, dataset, tmp_path / "whole", config, reporter=QUIET)

    checks = {"n": 0}

    def stop_after_three_steps():
        checks["n"] += 1
        return checks["n"] > 3

    with pytest.raises(Cancelled):
        train_decoder(sd1, dataset, tmp_path / "split", config, reporter=Reporter(should_stop=stop_after_three_steps,
                                                                                   log=lambda m: None))
    assert not (tmp_path / "split" / "concepts.safetensors").exists()  # a cancel writes no final file
    assert RunFolder(tmp_path / "split").checkpoints()[-1][0] == 3
    resumed = train_decoder(sd1, dataset, tmp_path / "split", config, reporter=QUIET)
    assert resumed.train.resumed_from == 3
    a, b = load_concept_file(whole.path), load_concept_file(resumed.path)
    assert a.unet_lora.keys() == b.unet_lora.keys()
    assert all(torch.equal(a.unet_lora[k], b.unet_lora[k]) for k in a.unet_lora)
    for ca, cb in zip(a.concepts, b.concepts):
        assert torch.equal(ca.embeddings["clip_l"], cb.embeddings["clip_l"])
    assert resumed.train.history == whole.train.history


def test_diverging_run_stops_keeps_its_checkpoint_and_writes_no_file(sd1, dataset, tmp_path):
    config = stage2_config(steps=10, checkpoint_every=1, lr=1e30, max_grad_norm=0.0)
    with pytest.raises(ClifError, match=r"loss became (nan|inf)") as caught:
        train_decoder(sd1, dataset, tmp_path / "run", config, reporter=QUIET)
    assert "last good checkpoint" in str(caught.value)
    run = RunFolder(tmp_path / "run")
    assert run.checkpoints() and not (tmp_path / "run" / "concepts.safetensors").exists()
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").rglob("*"))


def test_stage2_options_on_a_v_prediction_model_with_prior_preservation_and_checkpointing(tiny_sd2, dataset, tmp_path):
    base = load_base_model(tiny_sd2.diffusers_dir)
    assert base.prediction_type == "v_prediction"
    asked = []

    def generate(prompt, n, seed):
        asked.append(prompt)
        return [Image.new("RGB", (64, 64), (40 * i, 120, 200)) for i in range(n)]

    config = stage2_config(steps=4, masked_loss=True, min_snr_gamma=5.0, noise_offset=0.05, prior_weight=1.0,
                           prior_images=2, preview_steps=2, preview_every=2, gradient_checkpointing=True)
    previews = []
    reporter = Reporter(progress=lambda s, t, p=None: previews.append((s, p)) if p is not None and t == 4 else None,
                        log=lambda m: None)
    result = train_decoder(base, dataset, tmp_path / "run", config, reporter=reporter, generate=generate)
    assert asked == ["a photo of person"]  # one class word shared by both concepts, generated once
    assert (tmp_path / "run" / "class_images").is_dir()
    assert [s for s, _ in previews] == [2, 4]  # leakage grids drawn with the LoRA being trained (test_train_leakage)
    assert all(p.width == 48 + 3 * 66 + 2 for _, p in previews)  # 3 cells at the tiny model's native 64 px
    cf = load_concept_file(result.path, base=base)
    assert cf.base_prediction_type == "v_prediction" and cf.thumbnail is not None
    assert result.metrics["prediction_type"] == "v_prediction"
    assert not base.unet.is_gradient_checkpointing and not base.unet.training  # switched back afterwards


def test_stage2_from_stage1_on_sdxl_keeps_the_text_lora_and_notes(tiny_sdxl, dataset, tmp_path):
    base = load_base_model(tiny_sdxl.diffusers_dir)
    stage1 = train_contrastive(
        base, dataset, tiny_sdxl.vision_dir, tmp_path / "s1",
        ContrastiveConfig(text_lora_rank=2, holdout=0.0, loop=LoopConfig(steps=2, batch_size=2, log_every=0)), QUIET)
    result = train_decoder(base, dataset, tmp_path / "s2", stage2_config(steps=2), init=stage1.file,
                           reporter=QUIET)
    cf = load_concept_file(result.path, base=base)
    assert cf.text_lora.keys() == stage1.file.text_lora.keys()
    assert all(torch.equal(cf.text_lora[k], stage1.file.text_lora[k]) for k in cf.text_lora)
    assert set(cf.recipe) == {"stage1", "stage2"} and cf.metadata["stage1"]["paired_encoder"] == "clip_g"
    for c in cf.concepts:
        assert set(c.embeddings) == {"clip_l", "clip_g"}
    with apply_concepts(base, [(cf, 1.0)]):
        pass

    other = load_concept_file(save_concept_file(stage1.file, tmp_path / "s1.safetensors"))
    other.concepts[1].token = "<carol>"
    with pytest.raises(ClifError, match=r"holds the concepts \['<alice>', '<carol>'\]"):
        train_decoder(base, dataset, tmp_path / "s2b", stage2_config(steps=2), init=other, reporter=QUIET)


def test_prior_images_default_to_the_pack_sampler_and_are_cached(sd1, dataset, tmp_path):
    config = stage2_config(steps=1, prior_weight=0.5, prior_images=1, prior_generation_steps=2)
    train_decoder(sd1, dataset, tmp_path / "run", config, reporter=QUIET)
    [entry] = (tmp_path / "run" / "class_images").iterdir()
    assert entry.name.startswith("person-") and (entry / "000.png").is_file()
    with Image.open(entry / "000.png") as im:
        assert im.size == (64, 64)  # the tiny model's native size, drawn by clif_core.sample
