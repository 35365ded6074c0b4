"""Stage 1 on tiny models: the loss falls, two concepts that start identical (same class word) move apart,
every other embedding row and the whole base model stay bit-identical, the file is a valid intermediate
concept file; text LoRA and learnable temperature; SDXL pairing; vision towers from folders and files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clif_core.concepts.apply import apply_concepts
from clif_core.concepts.files import load_concept_file
from clif_core.errors import ClifError
from clif_core.models.loader import load_base_model
from clif_core.models.tiny import build_tiny_vision_tower
from clif_core.progress import Reporter
from clif_core.train.contrastive import ContrastiveConfig, train_contrastive
from clif_core.train.vision import load_vision_tower, pair_encoder, save_vision_tower_file
from clif_core.training.checkpoint import load_checkpoint
from clif_core.training.loop import LoopConfig
from clif_core.training.losses import info_nce
from clif_core.training.run_folder import RunFolder
from tests.helpers.datasets import make_dataset
from tests.helpers.weights import snapshot_base

QUIET = Reporter(log=lambda m: None)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stage1_config(**kw) -> ContrastiveConfig:
    loop = LoopConfig(steps=kw.pop("steps", 40), batch_size=4, checkpoint_every=20, log_every=0, seed=0)
    return ContrastiveConfig(lr=kw.pop("lr", 3e-2), holdout=0.15, loop=loop, **kw)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob")


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return load_base_model(tiny_sd1.diffusers_dir)


def test_stage1_separates_concepts_and_leaves_every_other_row_bit_identical(sd1, tiny_sd1, dataset, tmp_path):
    before = snapshot_base(sd1)
    vocab = len(sd1.text[0].tokenizer)
    result = train_contrastive(sd1, dataset, tiny_sd1.vision_dir, tmp_path / "run", stage1_config(), QUIET)

    m = result.metrics
    assert m["paired_encoder"] == "clip_l"
    assert m["before"]["concept_cosine"]["<alice>|<bob>"] == pytest.approx(1.0)  # same class word: identical
    assert m["after"]["concept_cosine"]["<alice>|<bob>"] < 0.9
    assert m["after"]["train_loss"] < 0.8 * m["before"]["train_loss"]
    losses = [loss for _, loss, _ in result.train.history]
    assert sum(losses[-8:]) < sum(losses[:8])
    assert set(m["after"]["retrieval_heldout"]) == {"image_to_caption", "caption_to_image", "pairs"}

    # The base model is exactly as before: no row, weight or tokenizer entry changed.
    after = snapshot_base(sd1)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(sd1.text[0].tokenizer) == vocab

    cf = load_concept_file(result.path, base=sd1)
    assert [c.token for c in cf.concepts] == ["<alice>", "<bob>"]
    assert all(c.vectors == 2 for c in cf.concepts)
    assert cf.metadata["stage1"]["paired_encoder"] == "clip_l" and cf.text_lora == {}
    with apply_concepts(sd1, [(cf, 1.0)]):
        table = sd1.text[0].encoder.get_input_embeddings().weight
        original = before["clip_l.text_model.embeddings.token_embedding.weight"] \
            if "clip_l.text_model.embeddings.token_embedding.weight" in before \
            else before["clip_l.embeddings.token_embedding.weight"]
        assert torch.equal(table[:vocab], original)  # every non-concept row bit-identical
        assert not torch.equal(table[vocab], table[vocab + 2])  # <alice> and <bob> differ
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["metrics"]["after"]["concept_cosine"] == m["after"]["concept_cosine"]


def test_stage1_text_lora_and_learnable_temperature(sd1, tiny_sd1, dataset, tmp_path):
    config = stage1_config(steps=6, text_lora_rank=2, text_lora_lr=1e-2, learnable_temperature=True)
    result = train_contrastive(sd1, dataset, tiny_sd1.vision_dir, tmp_path / "run", config, QUIET)
    cf = load_concept_file(result.path, base=sd1)
    assert cf.text_lora and all(k.startswith("lora_te_text_model_") for k in cf.text_lora)
    assert any(k.endswith("out_proj.lora_up.weight") for k in cf.text_lora)
    assert any(float(v.abs().sum()) > 0 for k, v in cf.text_lora.items() if k.endswith("lora_up.weight"))
    # the logit scale is trained (from CLIP's log 100; the loss may push it past the clamp at 100)
    [(_, last)] = RunFolder(tmp_path / "run").checkpoints()[-1:]
    logit_scale = load_checkpoint(last).params["temperature/logit_scale"]
    assert float(logit_scale) != pytest.approx(math.log(100.0), abs=1e-4)
    assert result.metrics["temperature"] <= 100.0 + 1e-3
    assert not any("lora" in n for n, _ in sd1.text[0].encoder.named_parameters())  # adapter removed again
    with pytest.raises(ClifError, match="must include out_proj"):
        stage1_config(text_lora_rank=2, text_lora_targets=("q_proj",)).check()


def test_sdxl_pairs_encoder_2_with_a_bigg_tower_else_trains_encoder_1_and_says_so(tiny_sdxl, tmp_path, dataset):
    base = load_base_model(tiny_sdxl.diffusers_dir)
    bigg = load_vision_tower(tiny_sdxl.vision_dir, base.device, base.dtype)
    assert pair_encoder(base, bigg)[0] == "clip_g"
    result = train_contrastive(base, dataset, bigg, tmp_path / "g", stage1_config(steps=4), QUIET)
    assert result.metrics["paired_encoder"] == "clip_g"

    vit_l = tmp_path / "vit_l.safetensors"
    save_vision_tower_file(build_tiny_vision_tower("sd1"), vit_l)  # projects to clip_l's width
    result = train_contrastive(base, dataset, vit_l, tmp_path / "l", stage1_config(steps=4), QUIET)
    cf = load_concept_file(result.path, base=base)
    assert result.metrics["paired_encoder"] == "clip_l"
    note = cf.metadata["stage1"]["note"]
    assert "no bigG vision tower" in note and "clip_l" in note and note in result.report()
    start = load_concept_file(tmp_path / "g" / "stage1.safetensors")
    # clip_g vectors were not trained in the clip_l-only run: they are still the class-word start (equal)
    alice, bob = cf.concepts
    assert torch.equal(alice.embeddings["clip_g"], bob.embeddings["clip_g"])
    assert not torch.equal(start.concepts[0].embeddings["clip_g"], start.concepts[1].embeddings["clip_g"])


def test_vision_tower_file_matches_folder_and_bad_towers_are_refused(sd1, tiny_sd1, tmp_path):
    folder = load_vision_tower(tiny_sd1.vision_dir, sd1.device, torch.float32)
    path = save_vision_tower_file(folder.model, tmp_path / "tower.safetensors")
    single = load_vision_tower(path, sd1.device, torch.float32)
    images = torch.rand(2, 3, 64, 64)
    assert torch.equal(folder.encode(images), single.encode(images))

    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"  # a tiny tower without its config: not a published size
    save_file({k: v.contiguous() for k, v in folder.model.state_dict().items()}, str(bare))
    with pytest.raises(ClifError, match="not a published size"):
        load_vision_tower(bare, sd1.device, torch.float32)
    wide = tmp_path / "wide.safetensors"
    save_vision_tower_file(build_tiny_vision_tower("sdxl"), wide)  # projects to 64: fits no sd1 encoder
    with pytest.raises(ClifError, match="projects to 64 values"):
        pair_encoder(sd1, load_vision_tower(wide, sd1.device, torch.float32))
    with pytest.raises(ClifError, match="does not exist"):
        load_vision_tower(tmp_path / "missing", sd1.device, torch.float32)


def test_info_nce_counts_identical_captions_as_positives():
    feats = torch.eye(3)
    perfect = info_nce(feats, feats, ["a", "b", "c"], torch.tensor(100.0))
    assert float(perfect) < 1e-6
    # Identical captions have identical features: with their images alike too, the loss is at its minimum
    # (zero gradient) instead of pushing apart two captions that cannot differ, as one-hot targets would.
    text = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]], requires_grad=True)
    loss = info_nce(text.detach().clone(), text, ["a", "a", "c"], torch.tensor(100.0))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2 / 3 * math.log(2), rel=1e-4)
    assert text.grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", ["vitl", "h", "g"])
def test_published_tower_shapes_give_comfyuis_own_configs(name):
    """A models/clip_vision file carries no config: the one read from the weights' shapes must be the one
    ComfyUI itself uses for that file (its clip_vision_config_*.json)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from clif_core.train.vision import _infer_config
    from tests.comfyui.rig import COMFYUI_DIR

    path = COMFYUI_DIR / "comfy" / f"clip_vision_config_{name}.json"
    if not path.is_file():
        pytest.skip("ComfyUI is not installed here (tests/comfyui/rig.py installs it)")
    comfy = json.loads(path.read_text())
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**comfy))
    inferred = _infer_config(model.state_dict(), str(path))
    for key, value in inferred.items():
        assert comfy.get(key, CLIPVisionConfig().to_dict()[key]) == value, key


def test_a_towers_declared_pairing_is_used_frozen_instead_of_a_learnt_head(sd1, tiny_sd1, dataset, tmp_path):
    """A vision folder whose contrastive.json says its tower was trained against the text encoder's pooled
    output (the sandbox model's) gets exactly that pairing: identity projection, frozen, its temperature."""
    import shutil

    declared = tmp_path / "tower"
    shutil.copytree(tiny_sd1.vision_dir, declared)
    pairing = {"text_features": "pooler_output of the text encoder (no projection)", "image_features": "image_embeds",
               "normalize": True, "logit_scale": 2.5}
    (declared / "contrastive.json").write_text(json.dumps(pairing), encoding="utf-8")
    tower = load_vision_tower(declared, sd1.device, torch.float32)
    assert torch.equal(tower.text_projection, torch.eye(tower.projection_dim)) and tower.logit_scale == 2.5

    result = train_contrastive(sd1, dataset, declared, tmp_path / "run", stage1_config(steps=2), QUIET)
    assert result.metrics["projection"] == "the text projection that came with the vision tower (frozen)"
    assert result.metrics["temperature"] == pytest.approx(math.exp(2.5))
    [(_, last)] = RunFolder(tmp_path / "run").checkpoints()[-1:]
    assert sorted(load_checkpoint(last).params) == ["tokens/clip_l"]  # no head of its own to train

    for bad, match in (({**pairing, "text_features": "text_embeds"}, "only pairing understood"),
                       ({**pairing, "logit_scale": "high"}, "finite number"),
                       ({**pairing, "normalize": False}, "normalised features")):
        (declared / "contrastive.json").write_text(json.dumps(bad), encoding="utf-8")
        with pytest.raises(ClifError, match=match):
            load_vision_tower(declared, sd1.device, torch.float32)
    (declared / "contrastive.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ClifError, match="contrastive.json"):
        load_vision_tower(declared, sd1.device, torch.float32)
