"""Concept file v1: bit-exact save/load, no pickles, and a clear refusal for every kind of bad file."""

from __future__ import annotations

import io
import json
import logging
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clif_core.concepts import lora_keys
from clif_core.concepts.checks import check_compatible
from clif_core.concepts.file_format import FORMAT_NAME
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.concepts.header import MAX_HEADER_BYTES, MAX_METADATA_BYTES
from clif_core.concepts.thumbnail import make_thumbnail
from clif_core.errors import ClifError
from clif_core.models.tiny import build_tiny_model
from tests.helpers.concept_files import assert_same, make_concept_file

# ------------------------------------------------------------------------------------------ helpers


def _header(path) -> dict:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def _data(path) -> bytes:
    raw = Path(path).read_bytes()
    return raw[8 + struct.unpack("<Q", raw[:8])[0] :]


def _rewrite(path, tensors=None, metadata=None, out=None):
    """Write a modified copy of a safetensors file (tensors and/or metadata replaced)."""
    t = load_file(str(path)) if tensors is None else tensors
    m = _header(path)["__metadata__"] if metadata is None else metadata
    save_file(t, str(out or path), metadata=m)
    return out or path


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_save_load_round_trip_is_bit_exact(family, tmp_path, request):
    base = request.getfixturevalue(family)
    cf = make_concept_file(base)
    cf.thumbnail = make_thumbnail(Image.new("RGB", (640, 480), (200, 30, 90)))
    cf.concepts[1].embeddings = {n: e.to(torch.float16) for n, e in cf.concepts[1].embeddings.items()}
    path = save_concept_file(cf, tmp_path / "set.safetensors")
    loaded = load_concept_file(path, base)
    assert_same(cf, loaded)
    assert Image.open(io.BytesIO(loaded.thumbnail)).size == (256, 192)
    # saving what was loaded gives the same header and tensor bytes (safetensors orders metadata freely)
    again = save_concept_file(loaded, tmp_path / "again.safetensors")
    assert _header(again) == _header(path)
    assert _data(again) == _data(path)


def test_metadata_names_format_concepts_base_and_modelspec(sd1, tmp_path):
    cf = make_concept_file(sd1)
    cf.thumbnail = make_thumbnail(Image.new("RGB", (64, 64)))
    meta = _header(save_concept_file(cf, tmp_path / "c.safetensors"))["__metadata__"]
    assert meta["clif.format"] == FORMAT_NAME and meta["clif.version"] == "1"
    assert json.loads(meta["clif.concepts"]) == [
        {"name": "alice", "token": "<alice>", "class_word": "person", "vectors": 2},
        {"name": "bob", "token": "<bob>", "class_word": "person", "vectors": 2},
    ]
    assert meta["clif.base_family"] == "sd1" and meta["clif.base_fingerprint"] == sd1.fingerprint
    assert json.loads(meta["clif.encoder_widths"]) == {"clip_l": 32}
    assert json.loads(meta["clif.recipe"]) == cf.recipe
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.title"] == "Alice and Bob"
    assert meta["modelspec.thumbnail"].startswith("data:image/png;base64,")


def test_erasure_kind_and_generic_metadata_round_trip(sd1, tmp_path):
    cf = make_concept_file(sd1, names=(), text_lora=False)
    cf.kind = "erasure"
    cf.title = ""
    cf.metadata = {"erased": [{"target": "Van Gogh style", "alternative": "dry brushing"}], "eta": 1.0}
    loaded = load_concept_file(save_concept_file(cf, tmp_path / "e.safetensors"), sd1)
    assert loaded.kind == "erasure" and loaded.metadata == cf.metadata and loaded.concepts == []
    assert loaded.title == "CLIF erasure"  # an empty title is saved as a derived one


def test_sdxl_tensor_keys_follow_kohya_and_bundled_embedding_layout(sdxl, tmp_path):
    cf = make_concept_file(sdxl)
    keys = set(load_file(str(save_concept_file(cf, tmp_path / "x.safetensors"))))
    assert {"bundle_emb.alice.clip_l", "bundle_emb.alice.clip_g", "bundle_emb.bob.clip_g"} <= keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha" in keys
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight" in keys


def test_file_holds_no_pickle_every_byte_is_header_or_tensor_data(sdxl, tmp_path):
    path = save_concept_file(make_concept_file(sdxl), tmp_path / "c.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    position = 0
    for start, end in spans:  # contiguous tensor data, nothing hidden between or after
        assert start == position
        position = end
    assert 8 + n + position == len(raw)
    assert not zipfile.is_zipfile(path) and b"\x80\x02" not in raw[: 8 + n]


# ------------------------------------------------------------------------------------------ refusals


def test_not_a_concept_file(tmp_path, sd1):
    plain = tmp_path / "plain_lora.safetensors"
    save_file(make_concept_file(sd1).unet_lora, str(plain))
    with pytest.raises(ClifError, match="not a CLIF concept file.*plain LoRA"):
        load_concept_file(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, not safetensors at all")
    with pytest.raises(ClifError, match="not a safetensors file"):
        load_concept_file(junk)
    ckpt = tmp_path / "model.ckpt"
    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(ClifError, match="not a safetensors file"):
        load_concept_file(ckpt)
    with pytest.raises(ClifError, match="no such file"):
        load_concept_file(tmp_path / "missing.safetensors")


def test_newer_version_is_refused(sd1, tmp_path):
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    meta = _header(path)["__metadata__"]
    _rewrite(path, metadata={**meta, "clif.version": "2"})
    with pytest.raises(ClifError, match="version 2, newer than this CLIF.*update"):
        load_concept_file(path)


def test_oversize_metadata_and_header_are_refused_before_parsing(sd1, tmp_path):
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    meta = _header(path)["__metadata__"]
    _rewrite(path, metadata={**meta, "clif.recipe": json.dumps({"x": "y" * MAX_METADATA_BYTES})})
    with pytest.raises(ClifError, match="metadata is .* KiB, over the"):
        load_concept_file(path)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" + b" " * (MAX_HEADER_BYTES + 16))
    with pytest.raises(ClifError, match="header is .* over the"):
        load_concept_file(huge)
    with pytest.raises(ClifError, match="metadata would be"):
        cf = make_concept_file(sd1)
        cf.recipe = {"notes": "z" * MAX_METADATA_BYTES}
        save_concept_file(cf, tmp_path / "big.safetensors")
    assert not (tmp_path / "big.safetensors").exists()


def test_missing_tensors_are_named(sd1, tmp_path):
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    tensors = load_file(str(path))
    del tensors["bundle_emb.bob.clip_l"]
    _rewrite(path, tensors=tensors, out=tmp_path / "no_emb.safetensors")
    with pytest.raises(ClifError, match="'bundle_emb.bob.clip_l' of concept 'bob' is missing"):
        load_concept_file(tmp_path / "no_emb.safetensors")

    tensors = load_file(str(path))
    up = next(k for k in tensors if k.startswith("lora_unet_") and k.endswith(".lora_up.weight"))
    del tensors[up]
    _rewrite(path, tensors=tensors, out=tmp_path / "no_up.safetensors")
    with pytest.raises(ClifError, match="lacks .lora_up.weight"):
        load_concept_file(tmp_path / "no_up.safetensors")

    tensors = load_file(str(path))
    module = up.split(".")[0]
    for suffix in lora_keys.LORA_SUFFIXES:
        del tensors[module + suffix]
    _rewrite(path, tensors=tensors, out=tmp_path / "no_module.safetensors")
    with pytest.raises(ClifError, match="lists .* unet LoRA modules but the file holds"):
        load_concept_file(tmp_path / "no_module.safetensors")


def test_truncated_file_is_refused(sd1, tmp_path):
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ClifError, match="truncated or damaged"):
        load_concept_file(path)


def test_wrong_family_width_and_lora_shape_are_refused_against_a_base(sd1, sdxl, tmp_path):
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    with pytest.raises(ClifError, match="made for a sd1 model but the base model is sdxl"):
        load_concept_file(path, sdxl)

    other = build_tiny_model("sd1", 0)
    slot = other.slot("clip_l")
    table = slot.encoder.get_input_embeddings()
    slot.encoder.set_input_embeddings(torch.nn.Embedding(table.num_embeddings, 48))
    with pytest.raises(ClifError, match="clip_l embeddings are 32 wide but the base model's clip_l encoder is 48"):
        load_concept_file(path, other)

    other = build_tiny_model("sd1", 0)
    name, _, layer = next(lora_keys.target_modules(other.unet, "lora_unet", ("to_q",)))
    parent = other.unet.get_submodule(name.rsplit(".", 1)[0])
    parent.to_q = torch.nn.Linear(layer.in_features + 8, layer.out_features, bias=False)
    with pytest.raises(ClifError, match="does not fit the base model's weight"):
        load_concept_file(path, other)


def test_fingerprint_mismatch_is_a_warning_not_an_error(sd1, tmp_path, caplog):
    cf = make_concept_file(sd1)
    cf.base_fingerprint = "f" * 64
    path = save_concept_file(cf, tmp_path / "c.safetensors")
    seen: list[str] = []
    load_concept_file(path, sd1, warn=seen.append)
    assert len(seen) == 1 and "trained on base ffffffffffff" in seen[0]
    with caplog.at_level(logging.WARNING):
        load_concept_file(path, sd1)
    assert "fine-tune" in caplog.text
    assert check_compatible(make_concept_file(sd1), sd1) == []


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda cf: setattr(cf.concepts[1], "token", "<alice>"), "used by two concepts"),
        (lambda cf: setattr(cf.concepts[0], "token", "two words"), "one word without spaces"),
        (lambda cf: setattr(cf.concepts[1], "name", "alice!"), "embedding name 'alice'"),
        (lambda cf: cf.concepts[0].embeddings.update(clip_l=torch.zeros(2, 31)), r"expected \[k, 32\]"),
        (lambda cf: cf.concepts[0].embeddings.update(clip_l=torch.zeros(3, 32)), "different vector counts"),
        (lambda cf: cf.concepts[0].embeddings.pop("clip_g"), "needs one per text encoder"),
        (lambda cf: cf.encoder_widths.update(clip_h=1024), "has the text encoders"),
        (lambda cf: setattr(cf, "kind", "patch"), "kind 'patch'"),
        (lambda cf: setattr(cf, "kind", "erasure"), "must list its erased concepts"),
        (lambda cf: (setattr(cf, "kind", "erasure"), cf.metadata.update(erased=[{"target": 3}])),
         "entry 0 of clif.metadata 'erased'"),
        (lambda cf: cf.concepts[0].embeddings["clip_l"].__setitem__((0, 0), float("nan")), "NaN or infinite"),
        (lambda cf: cf.unet_lora.update({k: torch.tensor(float("inf")) for k in cf.unet_lora if k.endswith("alpha")}),
         "alpha' holds NaN or infinite"),
        (lambda cf: cf.unet_lora.update({k: v.to(torch.int8) for k, v in cf.unet_lora.items() if "lora_up" in k}),
         "is int8; concept files hold float32, float16 or bfloat16 only"),
        (lambda cf: setattr(cf, "thumbnail", b"GIF89a"), "not a PNG"),
        (lambda cf: setattr(cf, "thumbnail", b"\x89PNG\r\n\x1a\n" + bytes(300_000)), "the limit is 256 KiB"),
        (lambda cf: setattr(cf, "recipe", {"when": object()}), "not JSON-serialisable"),
        (lambda cf: cf.unet_lora.update({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4, 3, 3),
                                         "lora_unet_conv_in.lora_up.weight": torch.zeros(32, 4, 1, 1),
                                         "lora_unet_conv_in.alpha": torch.tensor(4.0)}), "do not both load"),
        (lambda cf: cf.unet_lora.update({"lora_unet_x_to_q.dora_scale": torch.zeros(1)}), "no DoRA"),
        (lambda cf: cf.text_lora.update({k.replace("lora_te1_", "lora_te_"): v for k, v in cf.text_lora.items()}),
         "does not start with one of lora_te1_, lora_te2_"),
        (lambda cf: [cf.text_lora.pop(k) for k in list(cf.text_lora) if "lora_te2_" in k and "out_proj" in k],
         "lora_te2_ adapts q/k/v_proj but no out_proj"),
    ],
)
def test_bad_concept_sets_are_refused_at_save_and_nothing_is_written(sdxl, tmp_path, break_it, message):
    cf = make_concept_file(sdxl)
    break_it(cf)
    with pytest.raises(ClifError, match=message):
        save_concept_file(cf, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_summary_lists_concepts_and_lora(sd1):
    text = make_concept_file(sd1).summary()
    assert "<alice>: alice (class 'person', 2 vector(s)" in text
    assert "UNet LoRA: " in text and "rank 4" in text and "text LoRA: 8 modules, rank 2" in text


# ------------------------------------------------------------------------------------------ lora from peft


def test_lora_from_peft_keeps_each_modules_rank_and_alpha(sd1):
    from peft import LoraConfig

    model = build_tiny_model("sd1", 1)
    model.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v", "conv1"],
                                      rank_pattern={"conv1": 2}, alpha_pattern={"to_v": 3.0}, init_lora_weights=False))
    lora = lora_keys.lora_from_peft(model.unet, "lora_unet")
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"
    assert lora[name + ".alpha"].item() == 3.0 and lora[name + ".lora_down.weight"].shape[0] == 4
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert lora[conv + ".alpha"].item() == 8.0 and lora[conv + ".lora_down.weight"].shape == (2, 32, 3, 3)
    peft_layer = model.unet.get_submodule("down_blocks.0.resnets.0.conv1")
    assert torch.equal(lora[conv + ".lora_up.weight"], peft_layer.lora_B["default"].weight)

    encoder = model.slot("clip_l").encoder
    encoder.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "fc2"], init_lora_weights=False))
    text = lora_keys.lora_from_peft(encoder, "lora_te")
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in text  # text_model. restored
    lora_keys.check_lora_against(text, sd1.slot("clip_l").encoder, "lora_te", "test")


def test_lora_from_peft_refuses_modules_not_every_consumer_loads():
    from peft import LoraConfig

    model = build_tiny_model("sd1", 1)
    model.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "conv_in"], init_lora_weights=False))
    with pytest.raises(ClifError, match="conv_in.*Target only"):
        lora_keys.lora_from_peft(model.unet, "lora_unet")
    model = build_tiny_model("sd1", 1)
    model.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"], use_dora=True))
    with pytest.raises(ClifError, match="DoRA"):
        lora_keys.lora_from_peft(model.unet, "lora_unet")


def test_a_concept_file_fits_the_same_base_loaded_from_a_users_single_file(tiny_sd1, sd1, tmp_path):
    from clif_core.models.loader import load_base_model

    loaded_base = load_base_model(tiny_sd1.single_file, device="cpu", dtype=torch.float32)
    path = save_concept_file(make_concept_file(sd1), tmp_path / "c.safetensors")
    seen: list[str] = []
    load_concept_file(path, loaded_base, warn=seen.append)
    assert seen == []  # same weights, same fingerprint, whatever file format they came from
