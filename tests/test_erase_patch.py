"""Erasure patches: refused on another base, merged into a checkpoint exactly, exported for LoraLoader,
and the weight probe that lets a ComfyUI MODEL be checked."""

from __future__ import annotations

import pytest
import torch

from clif_core.concepts import lora_keys
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.erase.patch import (
    check_patch_base,
    export_for_loraloader,
    load_erasure_patch,
    merge_into_checkpoint,
    merged,
    probe_mismatch,
)
from clif_core.erase.subsets import lora_deltas
from clif_core.errors import ClifError
from clif_core.models.loader import load_base_model
from tests.helpers.concept_files import make_concept_file
from tests.helpers.weights import assert_unchanged, snapshot_module

# `made` (a tiny base and an erasure patch made on it) and `other_base` are session fixtures in conftest.py
pytestmark = pytest.mark.usefixtures("one_thread")


def test_patch_made_for_another_base_is_refused_unless_allowed(made, other_base):
    _, patch, path = made
    with pytest.raises(ClifError, match="was made on base .* but this base is"):
        load_erasure_patch(path, other_base)
    warnings = []
    loaded = load_erasure_patch(path, other_base, allow_other_base=True, warn=warnings.append)
    assert loaded.kind == "erasure" and len(warnings) == 1 and "applied anyway" in warnings[0]


def test_a_concept_file_is_not_an_erasure_patch(made, tmp_path):
    base, _, _ = made
    concepts = make_concept_file(base, seed=3, text_lora=False)
    save_concept_file(concepts, tmp_path / "concepts.safetensors")
    with pytest.raises(ClifError, match="not an erasure patch"):
        load_erasure_patch(tmp_path / "concepts.safetensors")


def test_summary_of_a_patch_names_pairs_method_and_base(made):
    _, patch, _ = made
    text = patch.summary()
    assert "'a photo of a pig' → 'a photo of a cow'" in text and "params xattn" in text
    assert patch.base_fingerprint[:12] in text


def test_merged_adds_the_lora_delta_and_restores_exactly(made):
    base, patch, _ = made
    before = snapshot_module(base.unet)
    names = {kohya: name for name, kohya, _ in lora_keys.target_modules(
        base.unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)}
    with merged(base, patch, strength=0.5):
        state = base.unet.state_dict()
        for module, delta in lora_deltas(patch.unet_lora):
            key = names[module] + ".weight"
            assert torch.allclose(state[key], before[key] + 0.5 * delta, atol=1e-6), module
    assert_unchanged(base.unet, before)


def test_merge_into_checkpoint_writes_a_loadable_model_with_the_patch_inside(made, tmp_path, other_base):
    from clif_core.concepts.apply import apply_concepts
    from clif_core.erase.conditioning import encode_prompts, unet_predict

    base, patch, _ = made
    before = snapshot_module(base.unet)
    out = merge_into_checkpoint(base, patch, tmp_path / "merged.safetensors")
    assert_unchanged(base.unet, before)
    merged_model = load_base_model(out, device="cpu")
    assert merged_model.fingerprint != base.fingerprint
    table = encode_prompts(base, ["", "a photo of a pig"], (32, 32))
    x, t, rows = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(500), \
        torch.tensor([0, 1])
    with torch.no_grad(), apply_concepts(base, [(patch, 1.0)]):
        via_lora = unet_predict(base, table, x, t, rows)
    with torch.no_grad():
        via_merge = unet_predict(merged_model, table, x, t, rows)
        plain = unet_predict(base, table, x, t, rows)
    assert (via_merge - via_lora).abs().max() < 1e-4 < (via_merge - plain).abs().max()
    with pytest.raises(ClifError, match="was made on base"):
        merge_into_checkpoint(other_base, patch, tmp_path / "refused.safetensors")
    assert not (tmp_path / "refused.safetensors").exists()


def test_export_for_loraloader_writes_the_lora_only(made, tmp_path):
    _, patch, _ = made
    path = export_for_loraloader(patch, tmp_path, "no_pigs")
    assert path == tmp_path / "no_pigs.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(patch.unet_lora)
    assert all(torch.equal(tensors[k], v) for k, v in patch.unet_lora.items())
    with pytest.raises(ClifError, match="would replace"):
        export_for_loraloader(patch, tmp_path, "no_pigs")
    with pytest.raises(ClifError, match="not made by CLIF|no clif.format|plain LoRA|exported"):
        load_concept_file(path)


def test_probe_accepts_half_precision_copies_and_rejects_other_weights(made, other_base):
    base, patch, _ = made
    layers = {kohya: layer.weight for _, kohya, layer in lora_keys.target_modules(
        base.unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)}
    probe = patch.metadata["unet_probe"]
    assert probe and set(probe) <= set(lora_keys.lora_modules(patch.unet_lora))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert probe_mismatch(patch, {m: layers[m].to(dtype) for m in probe}) is None, dtype
    others = {kohya: layer.weight for _, kohya, layer in lora_keys.target_modules(
        other_base.unet, lora_keys.UNET_PREFIX, lora_keys.UNET_LORA_TARGETS)}
    assert "differ" in probe_mismatch(patch, others)
    assert "no module" in probe_mismatch(patch, {})


def test_check_patch_base_refuses_another_family(made, tiny_sdxl):
    _, patch, _ = made
    sdxl = load_base_model(tiny_sdxl.diffusers_dir, device="cpu")
    with pytest.raises(ClifError, match="sd1 model but the base model is sdxl"):
        check_patch_base(patch, sdxl, allow_other_base=True)
