"""load_base_model: diffusers folders and single files give the same model, offline; bad files fail clearly."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from clif_core.errors import ClifError
from clif_core.models.loader import CONFIGS_METADATA_KEY, load_base_model
from clif_core.models.tiny import build_tiny_model


def _modules(base):
    return [("unet", base.unet), ("vae", base.vae)] + [(s.name, s.encoder) for s in base.text]


def assert_same_weights(a, b):
    for (name, ma), (_, mb) in zip(_modules(a), _modules(b), strict=True):
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, (name, key)
            assert torch.equal(sa[key], sb[key]), (name, key)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_folder_and_single_file_give_identical_models(family, request, no_network):
    paths = request.getfixturevalue(f"tiny_{family}")
    from_folder = load_base_model(paths.diffusers_dir, device="cpu")
    from_file = load_base_model(paths.single_file, device="cpu")
    built = build_tiny_model(family, seed=0)

    assert_same_weights(from_folder, from_file)
    assert_same_weights(built, from_file)
    assert from_folder.fingerprint == from_file.fingerprint == built.fingerprint
    assert from_folder.family == from_file.family == family
    assert from_file.source == paths.single_file and from_folder.source == paths.diffusers_dir
    assert not no_network


@pytest.mark.parametrize("family,slots", [("sd1", ["clip_l"]), ("sdxl", ["clip_l", "clip_g"])])
def test_loaded_model_is_frozen_in_eval_mode_with_slots_in_order(family, slots, request):
    paths = request.getfixturevalue(f"tiny_{family}")
    for source in (paths.diffusers_dir, paths.single_file):
        base = load_base_model(source, device="cpu")
        assert [s.name for s in base.text] == slots
        assert type(base.text[-1].encoder).__name__ == (
            "CLIPTextModelWithProjection" if family == "sdxl" else "CLIPTextModel"
        )
        for name, module in _modules(base):
            assert not module.training, name
            assert not any(p.requires_grad for p in module.parameters()), name
            assert {p.dtype for p in module.parameters()} == {torch.float32}, name
        assert base.prediction_type == "epsilon"
        assert base.device == torch.device("cpu") and base.dtype == torch.float32


def test_tokenizers_have_the_family_pad_tokens(tiny_sdxl):
    for source in (tiny_sdxl.diffusers_dir, tiny_sdxl.single_file):
        base = load_base_model(source, device="cpu")
        assert [s.tokenizer.pad_token for s in base.text] == ["<|endoftext|>", "!"]
        ids = base.slot("clip_g").tokenizer("a photo", padding="max_length", max_length=6).input_ids
        assert ids == [49406, 320, 1125, 49407, 0, 0]


def test_sd2_single_file_is_v_prediction_and_override_works(tiny_sd2):
    base = load_base_model(tiny_sd2.single_file, device="cpu")
    assert base.family == "sd2" and base.prediction_type == "v_prediction"
    assert type(base.scheduler).__name__ == "DDIMScheduler"
    assert load_base_model(tiny_sd2.single_file, device="cpu", prediction_type="epsilon").prediction_type == "epsilon"
    assert_same_weights(base, load_base_model(tiny_sd2.diffusers_dir, device="cpu"))
    with pytest.raises(ClifError, match="prediction_type 'v'"):
        load_base_model(tiny_sd2.single_file, device="cpu", prediction_type="v")


def test_dtype_argument_casts_every_module(tiny_sd1):
    base = load_base_model(tiny_sd1.single_file, device="cpu", dtype=torch.bfloat16)
    for name, module in _modules(base):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}, name
    assert base.dtype == torch.bfloat16
    # The fingerprint describes the stored weights, not the working precision they were cast to.
    assert base.fingerprint == load_base_model(tiny_sd1.single_file, device="cpu").fingerprint


def test_fingerprint_same_for_fp16_storage_and_differs_for_other_weights(tiny_sd1, tmp_path):
    state = load_file(tiny_sd1.single_file)
    from safetensors import safe_open

    with safe_open(str(tiny_sd1.single_file), "pt") as f:
        metadata = f.metadata()
    half = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in state.items()}, str(half), metadata=metadata)
    full = load_base_model(tiny_sd1.single_file, device="cpu")
    assert load_base_model(half, device="cpu").fingerprint == full.fingerprint

    changed = dict(state)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    changed[key] = changed[key].clone()
    changed[key][1234, 5] += 0.5  # one embedding row, as a merged concept token would change it
    edited = tmp_path / "edited.safetensors"
    save_file(changed, str(edited), metadata=metadata)
    assert load_base_model(edited, device="cpu").fingerprint != full.fingerprint
    assert build_tiny_model("sd1", seed=1).fingerprint != full.fingerprint


def test_weights_only_ckpt_loads_like_the_safetensors(tiny_sd1, tmp_path):
    from clif_core.models.loader import assemble_base_model, components_from_original, embedded_configs, read_checkpoint

    state, metadata = read_checkpoint(tiny_sd1.single_file)
    configs = embedded_configs(metadata, tiny_sd1.single_file)
    reference = load_base_model(tiny_sd1.single_file, device="cpu")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, ckpt)  # the LDM training-checkpoint wrapper
    pt = tmp_path / "model.pt"
    torch.save(state, pt)  # a bare state dict
    for path in (ckpt, pt):
        read, read_metadata = read_checkpoint(path)
        assert read_metadata == {} and read.keys() == state.keys()
        # .ckpt files carry no metadata, so the tiny configs are passed as the file's would be.
        base = assemble_base_model(**components_from_original(read, "sd1", configs, source=path))
        assert_same_weights(reference, base)
        assert base.fingerprint == reference.fingerprint


def test_pickled_code_in_ckpt_is_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, ckpt)
    with pytest.raises(ClifError) as caught:
        load_base_model(ckpt, device="cpu")
    message = str(caught.value)
    assert str(ckpt) in message and "pickled" in message and "safetensors" in message
    assert not marker.exists()
    # The payload is real: plain unpickling (what the loader never does) runs it.
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_safetensors_is_a_clear_error(tiny_sd1, tmp_path, cut):
    data = tiny_sd1.single_file.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ClifError) as caught:
        load_base_model(broken, device="cpu")
    assert str(broken) in str(caught.value) and "truncated or not a safetensors file" in str(caught.value)


def test_not_a_safetensors_file(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64 + b"hello")
    with pytest.raises(ClifError, match="truncated or not a safetensors file"):
        load_base_model(junk, device="cpu")


def test_truncated_ckpt(tiny_sd1, tmp_path):
    ckpt = tmp_path / "cut.ckpt"
    torch.save(load_file(tiny_sd1.single_file), ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(ClifError, match="truncated or not a PyTorch checkpoint"):
        load_base_model(ckpt, device="cpu")


def test_unknown_architecture_names_the_file_and_what_is_supported(tmp_path):
    other = tmp_path / "flux_like.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 2)}, str(other))
    with pytest.raises(ClifError) as caught:
        load_base_model(other, device="cpu")
    assert str(other) in str(caught.value) and "Stable Diffusion 1.x" in str(caught.value)


def test_weights_that_do_not_fit_the_configs_are_refused(tiny_sd1, tmp_path):
    from safetensors import safe_open

    with safe_open(str(tiny_sd1.single_file), "pt") as f:
        metadata = f.metadata()
    state = load_file(tiny_sd1.single_file)
    del state["model.diffusion_model.out.2.weight"]
    broken = tmp_path / "missing.safetensors"
    save_file(state, str(broken), metadata=metadata)
    with pytest.raises(ClifError, match="UNet weights do not fit.*conv_out.weight"):
        load_base_model(broken, device="cpu")

    bad_meta = tmp_path / "badmeta.safetensors"
    save_file(load_file(tiny_sd1.single_file), str(bad_meta), metadata={CONFIGS_METADATA_KEY: "{not json"})
    with pytest.raises(ClifError, match="clif.diffusers_configs"):
        load_base_model(bad_meta, device="cpu")

    # Without its embedded configs the tiny file is checked against the real SD 1.5 configs and refused.
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(tiny_sd1.single_file), str(plain))
    with pytest.raises(ClifError, match="do not fit the Stable Diffusion 1.x architecture"):
        load_base_model(plain, device="cpu")


def test_bad_paths_and_incomplete_folders(tiny_sd1, tmp_path):
    with pytest.raises(ClifError, match="does not exist"):
        load_base_model(tmp_path / "nope.safetensors", device="cpu")
    odd = tmp_path / "model.gguf"
    odd.write_bytes(b"GGUF")
    with pytest.raises(ClifError, match="unknown checkpoint type '.gguf'"):
        load_base_model(odd, device="cpu")
    with pytest.raises(ClifError, match="no model_index.json"):
        load_base_model(tmp_path, device="cpu")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_sd1.diffusers_dir, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(ClifError, match="no vae/ folder"):
        load_base_model(partial, device="cpu")
    shutil.copytree(tiny_sd1.diffusers_dir / "vae", partial / "vae")
    (partial / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"oops")
    with pytest.raises(ClifError, match=r"unet: could not be loaded"):
        load_base_model(partial, device="cpu")


def test_loading_is_offline_for_both_formats(tiny_sd1, tiny_sdxl, no_network):
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for paths in (tiny_sd1, tiny_sdxl):
        load_base_model(paths.diffusers_dir, device="cpu")
        load_base_model(paths.single_file, device="cpu")
    assert list(no_network) == []


def test_network_guard_refuses_and_records(no_network):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(OSError):
        sock.connect(("192.0.2.1", 443))
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    assert ("connect", ("192.0.2.1", 443)) in no_network
    assert ("getaddrinfo", "huggingface.co") in no_network


def test_legacy_eos_token_id_is_fixed_so_added_tokens_do_not_pool(tiny_sd1, tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(tiny_sd1.diffusers_dir, folder)
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)  # as in the published SD configs
    config_path.write_text(json.dumps(config))
    base = load_base_model(folder, device="cpu")
    slot = base.slot("clip_l")
    assert slot.encoder.config.eos_token_id == 49407
    slot.tokenizer.add_tokens(["<concept>"])
    slot.encoder.resize_token_embeddings(len(slot.tokenizer))
    ids = slot.tokenizer(["a <concept> photo"], return_tensors="pt").input_ids
    out = slot.encoder(ids)
    eos_position = int((ids[0] == 49407).nonzero()[0])
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, eos_position])


def test_published_style_tokenizer_folders_load(tiny_sdxl, tmp_path):
    """Hub SD repos ship vocab.json + merges.txt + tokenizer_config.json (no tokenizer.json)."""
    from clif_core.models.clip_bpe import BPE_DIR
    from clif_core.models.families import CONFIGS_DIR

    folder = tmp_path / "published_style"
    shutil.copytree(tiny_sdxl.diffusers_dir, folder)
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.rmtree(folder / sub)
        shutil.copytree(CONFIGS_DIR / "sdxl_base" / sub, folder / sub)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(BPE_DIR / name, folder / sub / name)
    base = load_base_model(folder, device="cpu")
    assert [s.tokenizer.pad_token for s in base.text] == ["<|endoftext|>", "!"]
    for slot in base.text:
        ids = slot.tokenizer("a photo of a cat", padding="max_length", max_length=9).input_ids
        assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert ids[7:] == [slot.tokenizer.pad_token_id] * 2
    assert base.fingerprint == load_base_model(tiny_sdxl.single_file, device="cpu").fingerprint
