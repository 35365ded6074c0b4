"""Exports to ComfyUI-native files (one embedding per concept + one LoRA) and imports back, bit-exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from clif_core.concepts.exports import export_comfy, import_comfy
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.errors import ClifError
from tests.helpers.concept_files import assert_same, make_concept_file


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_export_then_import_is_bit_exact_through_disk(family, tmp_path, request):
    base = request.getfixturevalue(family)
    cf = make_concept_file(base)
    cf.metadata = {"note": "round trip"}
    stored = load_concept_file(save_concept_file(cf, tmp_path / "set.safetensors"), base)
    written = export_comfy(stored, tmp_path / "embeddings", tmp_path / "loras", "my_set")
    assert written == [tmp_path / "loras" / "my_set.safetensors", tmp_path / "embeddings" / "alice.safetensors",
                       tmp_path / "embeddings" / "bob.safetensors"]
    back = import_comfy(written[0], written[1:])
    assert_same(cf, back)
    # and again through a concept file
    assert_same(cf, load_concept_file(save_concept_file(back, tmp_path / "back.safetensors"), base))


def test_embedding_files_use_the_keys_comfyui_and_a1111_read(sd1, sdxl, tmp_path):
    cf = make_concept_file(sd1, k=3)
    export_comfy(cf, tmp_path / "e1", tmp_path / "l1", "s")
    one = load_file(str(tmp_path / "e1" / "alice.safetensors"))
    assert list(one) == ["emb_params"] and torch.equal(one["emb_params"], cf.concepts[0].embeddings["clip_l"])

    cf = make_concept_file(sdxl)
    export_comfy(cf, tmp_path / "e2", tmp_path / "l2", "s")
    two = load_file(str(tmp_path / "e2" / "bob.safetensors"))
    assert sorted(two) == ["clip_g", "clip_l"]
    assert torch.equal(two["clip_g"], cf.concepts[1].embeddings["clip_g"])
    lora = load_file(str(tmp_path / "l2" / "s.safetensors"))
    assert lora.keys() == {**cf.unet_lora, **cf.text_lora}.keys()
    assert all(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_")) for k in lora)


def test_export_refuses_to_replace_files_unless_asked(sd1, tmp_path):
    cf = make_concept_file(sd1)
    export_comfy(cf, tmp_path / "emb", tmp_path / "lora", "set")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.safetensors")}
    changed = make_concept_file(sd1, seed=5)
    with pytest.raises(ClifError, match="would replace .*alice.safetensors.*allow overwriting"):
        export_comfy(changed, tmp_path / "emb", tmp_path / "lora", "set")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*.safetensors")} == before
    export_comfy(changed, tmp_path / "emb", tmp_path / "lora", "set", overwrite=True)
    assert_same(changed, import_comfy(tmp_path / "lora" / "set.safetensors",
                                      sorted((tmp_path / "emb").glob("*.safetensors"))))


def test_tokens_only_set_exports_embeddings_only(sd1, tmp_path):
    cf = make_concept_file(sd1, text_lora=False, unet_targets=())
    written = export_comfy(cf, tmp_path / "emb", tmp_path / "lora", "tokens")
    assert [p.parent.name for p in written] == ["emb", "emb"]
    back = import_comfy(None, written)
    assert [c.token for c in back.concepts] == ["<alice>", "<bob>"]
    assert back.unet_lora == {} and torch.equal(back.concepts[0].embeddings["clip_l"],
                                                cf.concepts[0].embeddings["clip_l"])


def test_import_of_files_made_by_other_tools(sd1, tmp_path):
    cf = make_concept_file(sd1)
    save_file({"emb_params": cf.concepts[0].embeddings["clip_l"]}, str(tmp_path / "my-cat.safetensors"))
    save_file(cf.unet_lora, str(tmp_path / "style.safetensors"))
    with pytest.raises(ClifError, match="cannot tell the model family from a 32-wide embedding"):
        import_comfy(tmp_path / "style.safetensors", [tmp_path / "my-cat.safetensors"])
    got = import_comfy(tmp_path / "style.safetensors", [tmp_path / "my-cat.safetensors"], family="sd1")
    assert [(c.name, c.token, c.class_word) for c in got.concepts] == [("my-cat", "<my-cat>", "")]
    assert got.encoder_widths == {"clip_l": 32} and got.unet_lora.keys() == cf.unet_lora.keys()
    save_concept_file(got, tmp_path / "imported.safetensors")  # a valid concept file


def test_import_refusals(sd1, sdxl, tmp_path):
    cf = make_concept_file(sdxl)
    written = export_comfy(cf, tmp_path / "emb", tmp_path / "lora", "set")
    with pytest.raises(ClifError, match="belongs with the embeddings of bob"):
        import_comfy(written[0], written[1:2])
    with pytest.raises(ClifError, match="exported for sdxl, not sd1"):
        import_comfy(written[0], written[1:], family="sd1")
    with pytest.raises(ClifError, match="LoRA exported from one"):
        load_concept_file(written[0])
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}}, tmp_path / "old.pt")
    with pytest.raises(ClifError, match="only .safetensors embeddings"):
        import_comfy(None, [tmp_path / "old.pt"], family="sd1")
    save_file({"clip_l": torch.zeros(2, 32)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ClifError, match="'clip_l' and 'clip_g'"):
        import_comfy(None, [tmp_path / "half.safetensors"], family="sdxl")
    save_file({"lora_unet_a.lora_A.weight": torch.zeros(2, 2), "unet.b.lora_A.weight": torch.zeros(2, 2)},
              str(tmp_path / "peft.safetensors"))
    with pytest.raises(ClifError, match="not in the kohya layout"):
        import_comfy(tmp_path / "peft.safetensors", [], family="sd1")
