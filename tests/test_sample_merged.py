"""Concept files merged for sampling (clif_core.concepts.merged): repeated runs reuse the kept deltas and give
the same images, other files or none leave no trace, a changed file is never served from the cache, and the
merged weights compute what peft's live adapters compute."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from peft.tuners.lora import LoraLayer

import clif_core.concepts.merged as merged_module
from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.merged import apply_merged, cached_fingerprints, clear_cache
from clif_core.models.tiny import build_tiny_model
from clif_core.sample.config import SampleConfig
from clif_core.sample.recipe import concept_file_fingerprint
from clif_core.sample.regional import layout_regions
from clif_core.sample.sampler import ConceptUse, sample
from tests.helpers.concept_files import make_concept_file

CONFIG = dict(seed=3, steps=2, cfg=4.0)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in result.images])


def snapshot(base) -> dict:
    """What another consumer of the base can observe: tokenizer objects and sizes, embedding modules, every
    parameter object and its values, peft bookkeeping."""
    parts = [base.unet, base.vae, *(s.encoder for s in base.text)]
    return {
        "tokenizers": [(s.tokenizer, len(s.tokenizer)) for s in base.text],
        "tables": [s.encoder.get_input_embeddings() for s in base.text],
        "params": [(name, p, p.detach().clone()) for part in parts for name, p in part.named_parameters()],
        "peft": [getattr(part, "peft_config", None) for part in parts],
    }


def assert_as_before(base, before: dict) -> None:
    after = snapshot(base)
    assert [(t is u, n == m) for (t, n), (u, m) in zip(after["tokenizers"], before["tokenizers"])] == \
        [(True, True)] * len(base.text)
    assert all(a is b for a, b in zip(after["tables"], before["tables"]))
    assert [name for name, _, _ in after["params"]] == [name for name, _, _ in before["params"]]
    for (name, p, _), (_, q, values) in zip(after["params"], before["params"]):
        assert p is q, name  # the very same Parameter object
        assert torch.equal(p, values), name
    assert after["peft"] == before["peft"] == [None] * len(after["peft"])
    assert not any(isinstance(m, LoraLayer) for m in base.unet.modules())


@pytest.fixture
def sd1():
    base = build_tiny_model("sd1", 0)
    yield base
    clear_cache(base)


def fail_if_loaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the deltas were loaded again instead of taken from the cache")

    monkeypatch.setattr(merged_module, "lora_deltas", refuse)


def test_a_second_run_with_the_same_files_reuses_the_deltas_and_gives_the_same_images(sd1, monkeypatch):
    cf = make_concept_file(sd1, seed=4)
    config = SampleConfig("a photo of <alice> and <bob>", **CONFIG)
    first = sample(sd1, config, [ConceptUse(cf, 0.8)])
    assert cached_fingerprints(sd1) == [concept_file_fingerprint(cf)]
    fail_if_loaded(monkeypatch)
    again = sample(sd1, config, [ConceptUse(cf, 0.8)])  # a new ConceptUse, as the node makes per run
    assert torch.equal(again.latents, first.latents)
    assert np.array_equal(pixels(again), pixels(first))
    other_seed = sample(sd1, dataclasses.replace(config, seed=4), [ConceptUse(cf, 0.8)])
    assert not torch.equal(other_seed.latents, first.latents)
    # another strength reuses the same deltas and renders as on a base that never saw the file
    half = sample(sd1, config, [ConceptUse(cf, 0.4)])
    monkeypatch.undo()
    fresh = build_tiny_model("sd1", 0)
    assert torch.equal(sample(fresh, config, [ConceptUse(cf, 0.4)]).latents, half.latents)
    clear_cache(fresh)


def test_switching_to_no_files_is_bit_identical_to_a_base_that_never_had_any(sd1):
    plain = SampleConfig("a photo of a person in a park", **CONFIG)
    never = sample(build_tiny_model("sd1", 0), plain)
    before = snapshot(sd1)
    cf = make_concept_file(sd1, seed=4)
    first = sample(sd1, dataclasses.replace(plain, prompt="<alice> in a park"), [ConceptUse(cf, 1.0)])
    assert_as_before(sd1, before)
    after = sample(sd1, plain)
    assert torch.equal(after.latents, never.latents)
    assert np.array_equal(pixels(after), pixels(never))
    # and back to the file, from the cache: the same images as its first run
    again = sample(sd1, dataclasses.replace(plain, prompt="<alice> in a park"), [ConceptUse(cf, 1.0)])
    assert_as_before(sd1, before)
    assert torch.equal(again.latents, first.latents)


def test_switching_files_swaps_the_cache_and_restores_the_base(sd1):
    before = snapshot(sd1)
    alice = make_concept_file(sd1, seed=4, names=("alice",))
    bob = make_concept_file(sd1, seed=5, names=("bob",), text_lora=False)
    config = SampleConfig("<alice> and <bob>", **CONFIG)
    both = sample(sd1, config, [ConceptUse(alice, 1.0), ConceptUse(bob, 0.6)])
    assert cached_fingerprints(sd1) == [concept_file_fingerprint(alice), concept_file_fingerprint(bob)]
    only_bob = sample(sd1, dataclasses.replace(config, prompt="<bob>"), [ConceptUse(bob, 0.6)])
    assert cached_fingerprints(sd1) == [concept_file_fingerprint(bob)]  # the last run's files only
    assert_as_before(sd1, before)
    fresh = build_tiny_model("sd1", 0)
    assert torch.equal(sample(fresh, config, [ConceptUse(alice, 1.0), ConceptUse(bob, 0.6)]).latents, both.latents)
    assert torch.equal(sample(fresh, dataclasses.replace(config, prompt="<bob>"), [ConceptUse(bob, 0.6)]).latents,
                       only_bob.latents)
    clear_cache(fresh)


def test_a_changed_file_under_the_same_name_is_not_served_from_the_cache(sd1):
    config = SampleConfig("a photo of <alice>", **CONFIG)
    original = make_concept_file(sd1, seed=4, names=("alice",))
    changed = dataclasses.replace(original, unet_lora={
        k: v * 1.5 if k.endswith("lora_up.weight") else v for k, v in original.unet_lora.items()})
    assert changed.display_title() == original.display_title()
    first = sample(sd1, config, [ConceptUse(original, 1.0, path="alice.safetensors")])
    second = sample(sd1, config, [ConceptUse(changed, 1.0, path="alice.safetensors")])
    assert not torch.equal(second.latents, first.latents)
    assert cached_fingerprints(sd1) == [concept_file_fingerprint(changed)]
    fresh = build_tiny_model("sd1", 0)
    assert torch.equal(sample(fresh, config, [ConceptUse(changed, 1.0)]).latents, second.latents)
    clear_cache(fresh)


def test_deltas_that_no_longer_fit_the_base_are_loaded_again(sd1, monkeypatch):
    config = SampleConfig("a photo of <alice>", **CONFIG)
    cf = make_concept_file(sd1, seed=4, names=("alice",))
    first = sample(sd1, config, [cf])
    [kept] = merged_module._DELTAS[sd1.unet].values()
    key = next(iter(kept))
    kept[key] = kept[key].double()  # as if the base had been moved to another dtype since
    loads = []
    real = merged_module.lora_deltas
    monkeypatch.setattr(merged_module, "lora_deltas", lambda *a: loads.append(1) or real(*a))
    assert torch.equal(sample(sd1, config, [cf]).latents, first.latents)
    assert loads == [1]


def test_a_half_precision_base_reuses_its_deltas_and_is_restored_exactly(monkeypatch):
    base = build_tiny_model("sd1", 0)
    for part in (base.unet, *(s.encoder for s in base.text)):
        part.to(torch.bfloat16)
    before = snapshot(base)
    cf = make_concept_file(base, seed=1)
    files, fingerprints = [(cf, 0.9)], [concept_file_fingerprint(cf)]
    layer = base.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    original = layer.weight.detach().clone()
    with apply_merged(base, files, fingerprints):
        first = layer.weight.detach().clone()
        assert layer.weight.dtype == torch.bfloat16 and not torch.equal(first, original)
    assert_as_before(base, before)
    fail_if_loaded(monkeypatch)
    with apply_merged(base, files, fingerprints):
        assert torch.equal(layer.weight, first)
    assert_as_before(base, before)
    clear_cache(base)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_merged_weights_compute_what_live_peft_adapters_compute(family):
    """UNet and text encoder outputs with two files at their strengths: merged into the weights vs peft's
    adapters (apply_concepts), equal to float32 rounding; afterwards the base computes as before, exactly."""
    base = build_tiny_model(family, 0)
    a = make_concept_file(base, seed=1, names=("alice",))
    b = make_concept_file(base, seed=2, names=("bob",))
    files = [(a, 0.7), (b, 1.2)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    ctx = torch.randn(1, 7, base.unet.config.cross_attention_dim, generator=gen)
    kwargs = {}
    if family == "sdxl":
        pooled = base.slot("clip_g").encoder.config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}

    def outputs() -> list[torch.Tensor]:
        out = [base.unet(x, torch.tensor([500]), ctx, **kwargs).sample]
        for slot in base.text:
            ids = slot.tokenizer("<alice> and <bob>", padding="max_length", return_tensors="pt",
                                 max_length=slot.tokenizer.model_max_length).input_ids
            out.append(slot.encoder(ids).last_hidden_state)
        return out

    with torch.no_grad():
        plain = outputs()
        with apply_concepts(base, files):
            live = outputs()
        with apply_merged(base, files, [concept_file_fingerprint(cf) for cf, _ in files]) as applied:
            assert applied.adapters == {} and not any(isinstance(m, LoraLayer) for m in base.unet.modules())
            merged = outputs()
        after = outputs()
    assert (merged[0] - plain[0]).abs().max() > 1e-2  # the LoRAs matter
    for m, v in zip(merged, live):
        torch.testing.assert_close(m, v, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(t, u) for t, u in zip(after, plain))
    clear_cache(base)


def test_an_isolated_file_stays_a_live_adapter_next_to_a_merged_patch(sd1, monkeypatch):
    before = snapshot(sd1)
    alice = make_concept_file(sd1, seed=4, names=("alice",))
    patch = dataclasses.replace(make_concept_file(sd1, seed=6, names=(), text_lora=False), kind="erasure",
                                title="erase dogs", metadata={"erased": [{"target": "dog", "alternative": None}]})
    seen = []
    real = merged_module.load_loras

    def spy(base, files, applied):
        real(base, files, applied)
        seen.append(sorted(applied.adapters))

    monkeypatch.setattr(merged_module, "load_loras", spy)
    config = SampleConfig("two people", regions=layout_regions("left_right", ["<alice>, a woman", "a man"]),
                          **CONFIG)
    with_patch = sample(sd1, config, [ConceptUse(alice, 1.0, region=1), ConceptUse(patch, 1.0)])
    assert seen[-1] == ["clif_0"]  # only the isolated file is loaded as an adapter; the other is merged
    without = sample(sd1, config, [ConceptUse(alice, 1.0, region=1)])
    assert np.abs(pixels(with_patch) - pixels(without)).mean() > 1.0
    assert_as_before(sd1, before)


def test_the_kept_deltas_go_with_their_base_model():
    """ComfyUI's "free model and node cache" drops the loader's output, the base model: its deltas must not
    outlive it (they are one more copy of the weights the files touch)."""
    import gc
    import weakref

    base = build_tiny_model("sd1", 0)
    cf = make_concept_file(base, seed=4)
    sample(base, SampleConfig("a photo of <alice>", seed=3, steps=1, cfg=4.0), [ConceptUse(cf, 1.0)])
    deltas = merged_module._DELTAS[base.unet][concept_file_fingerprint(cf)]
    kept = weakref.ref(next(iter(deltas.values())))  # one ΔW tensor
    before = len(merged_module._DELTAS)
    del base, deltas
    gc.collect()
    assert len(merged_module._DELTAS) == before - 1
    assert kept() is None
