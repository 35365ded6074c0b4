"""The pack's own bad-input suite: hostile or broken input to the CLI and the Python API is refused with a
ClifError (or argparse's usage error for option values) that names the file or option, exit code 2 on the
command line, and nothing written, replaced or left behind as a temp file. docs/refusals.md lists the rules."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from clif_core.cli import main
from clif_core.concepts.exports import import_comfy
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.errors import ClifError
from clif_core.models.tiny import build_tiny_model
from tests.helpers.broken_files import BROKEN_FILES, NaN, rewritten
from tests.helpers.cli import run_cli
from tests.helpers.concept_files import make_concept_file
from tests.helpers.files import snapshot_files

# ------------------------------------------------------------------------------------------------- helpers


def refused_by_cli(argv: list[str], root: Path, capsys, *named: str) -> str:
    """Run `argv`; assert exit 2, no traceback, every `named` text in the message and `root` unchanged."""
    before = snapshot_files(root)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    for text in named:
        assert text in err, (text, err)
    assert snapshot_files(root) == before
    return err


def refused_by_api(call: Callable[[], Any], root: Path, *named: str) -> ClifError:
    before = snapshot_files(root)
    with pytest.raises(ClifError) as info:
        call()
    for text in named:
        assert text in str(info.value), (text, str(info.value))
    assert snapshot_files(root) == before
    return info.value


def png_bomb(path: Path, width: int = 12_000, height: int = 12_000) -> Path:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def picture(path: Path, width: int = 96, height: int = 80) -> Path:
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path)
    return path


@pytest.fixture()
def good_file(sd1, tmp_path) -> Path:
    return save_concept_file(make_concept_file(sd1, k=1, text_lora=False, unet_targets=("to_q",)),
                             tmp_path / "good.safetensors")


# ------------------------------------------------------------------------------ 1. numeric options (CLI)

SAMPLE = ["sample", "--base", "BASE", "--prompt", "a cat", "--out", "OUT"]
ERASE = ["erase", "--base", "BASE", "--target", "pig", "--out", "OUT/patch.safetensors"]
PURIFY = ["erase", "purify", "--base", "BASE", "--patch", "P", "--image", "I", "--out", "OUT/x.png"]
MERGE = ["erase", "merge", "--base", "BASE", "--patch", "P", "--out", "OUT/m.safetensors"]
TRAIN2 = ["train", "stage2", "--dataset", "D", "--base", "BASE", "--run-dir", "OUT/run"]
TRAIN1 = ["train", "stage1", "--dataset", "D", "--base", "BASE", "--run-dir", "OUT/run", "--vision", "V"]
AUGMENT = ["augment", "--concept", "F", "<a>", "man", "--out", "OUT/ds"]

OPTION_CASES = [
    (SAMPLE, "--steps", "0"), (SAMPLE, "--steps", "100000"), (SAMPLE, "--steps", "ten"),
    (SAMPLE, "--cfg", "nan"), (SAMPLE, "--cfg", "inf"), (SAMPLE, "--cfg", "-1"), (SAMPLE, "--cfg", "1e400"),
    (SAMPLE, "--width", "100000"), (SAMPLE, "--height", "100000"), (SAMPLE, "--width", "0"),
    (SAMPLE, "--batch", "100000"), (SAMPLE, "--batch", "0"), (SAMPLE, "--seed", "-1"),
    (SAMPLE, "--region-strength", "nan"), (SAMPLE, "--region-strength", "2"),
    (SAMPLE, "--concepts", "file.safetensors:nan"), (SAMPLE, "--concepts", "file.safetensors:inf"),
    (SAMPLE, "--concepts", "file.safetensors:-inf"), (SAMPLE, "--concepts", "file.safetensors:1e6"),
    (ERASE, "--lr", "nan"), (ERASE, "--lr", "5"), (ERASE, "--eta", "inf"), (ERASE, "--lam", "nan"),
    (ERASE, "--negative-eta", "-1"), (ERASE, "--preserve-weight", "nan"), (ERASE, "--steps", "0"),
    (ERASE, "--batch-size", "1000000"), (ERASE, "--guidance-scale", "nan"), (ERASE, "--lora-rank", "0"),
    (ERASE, "--trajectories", "0"), (ERASE, "--sample-steps", "1"), (ERASE, "--resolution", "100000"),
    (ERASE, "--patch-tolerance", "1"), (ERASE, "--patch-max-rank", "-1"), (ERASE, "--seed", "-5"),
    (PURIFY, "--strength", "nan"), (PURIFY, "--strength", "0"), (PURIFY, "--steps", "0"),
    (PURIFY, "--guidance-scale", "inf"), (MERGE, "--strength", "nan"), (MERGE, "--strength", "1e9"),
    (TRAIN2, "--lr", "nan"), (TRAIN2, "--lr", "inf"), (TRAIN2, "--steps", "0"), (TRAIN2, "--lora-rank", "0"),
    (TRAIN2, "--noise-offset", "inf"), (TRAIN2, "--vectors", "0"), (TRAIN2, "--batch-size", "-1"),
    (TRAIN2, "--max-grad-norm", "nan"), (TRAIN2, "--token-lr", "-0.1"), (TRAIN2, "--prior-weight", "nan"),
    (TRAIN2, "--min-snr-gamma", "inf"), (TRAIN1, "--holdout", "1"), (TRAIN1, "--text-lora-lr", "nan"),
    (TRAIN1, "--lr", "nan"), (AUGMENT, "--resolution", "100000"), (AUGMENT, "--global", "-1"),
    (AUGMENT, "--seed", "-1"), (AUGMENT, "--min-side", "1"), (AUGMENT, "--common-images", "100000"),
]


@pytest.mark.parametrize("command, option, value", OPTION_CASES,
                         ids=[f"{c[0]}{'-' + c[1] if not c[1].startswith('-') else ''}{o}={v}"
                              for c, o, v in OPTION_CASES])
def test_bad_option_values_are_refused_at_parse_time(tmp_path, capsys, command, option, value):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command] + [option, value]
    refused_by_cli(argv, tmp_path, capsys, f"argument {option}")


# -------------------------------------------------------------------- 1./2. numbers and sizes (Python API)


def _sample_config(**changes):
    from clif_core.sample.config import SampleConfig

    return SampleConfig(prompt="a cat", **changes)


def _region(**changes):
    from clif_core.sample.config import Region

    return Region("left", **changes)


API_NUMBER_CASES = [
    (lambda: _sample_config(cfg=float("nan")), "cfg"),
    (lambda: _sample_config(cfg=float("inf")), "cfg"),
    (lambda: _sample_config(cfg=1e9), "cfg"),
    (lambda: _sample_config(steps=0), "steps"),
    (lambda: _sample_config(steps=10**6), "steps"),
    (lambda: _sample_config(width=100_000), "width"),
    (lambda: _sample_config(height=100_000), "height"),
    (lambda: _sample_config(batch=10_000), "batch"),
    (lambda: _sample_config(width=4096, height=4096, batch=8), "megapixels"),
    (lambda: _sample_config(seed=-1), "seed"),
    (lambda: _sample_config(regions=(_region(box=(0, 0, 1, 1), strength=float("nan")),)), "strength"),
    (lambda: _sample_config(regions=(_region(mask=np.ones((1, 1), np.float32)),)), "1x1, below the minimum"),
    (lambda: _sample_config(regions=(_region(mask=np.full((64, 64), np.nan, np.float32)),)), "NaN"),
]


@pytest.mark.parametrize("make, named", API_NUMBER_CASES, ids=[n for _, n in API_NUMBER_CASES])
def test_sample_config_refuses_non_finite_and_oversize_values(tmp_path, make, named):
    refused_by_api(lambda: make().check(), tmp_path, named)


def _erase_config(**changes):
    from clif_core.erase.config import EraseConfig, EraseTarget

    return EraseConfig(targets=[EraseTarget("pig", None)], **changes)


def _loop(**changes):
    from clif_core.training.loop import LoopConfig

    return LoopConfig(**changes)


SETTINGS_CASES = [
    (lambda: _erase_config(lr=float("nan")), "lr"),
    (lambda: _erase_config(eta=float("inf")), "eta"),
    (lambda: _erase_config(guidance_scale=float("nan")), "guidance_scale"),
    (lambda: _erase_config(loop=_loop(max_grad_norm=float("nan"))), "max_grad_norm"),
    (lambda: _loop(weight_decay=float("inf")), "weight_decay"),
    (lambda: __import__("clif_core.train.decoder", fromlist=["x"]).DecoderConfig(lr=float("nan")), "lr"),
    (lambda: __import__("clif_core.train.decoder", fromlist=["x"]).DecoderConfig(noise_offset=float("inf")),
     "noise_offset"),
    (lambda: __import__("clif_core.train.contrastive", fromlist=["x"]).ContrastiveConfig(lr=float("nan")), "lr"),
]


@pytest.mark.parametrize("make, named", SETTINGS_CASES, ids=[f"{i}-{n}" for i, (_, n) in enumerate(SETTINGS_CASES)])
def test_training_settings_refuse_non_finite_values(tmp_path, make, named):
    refused_by_api(lambda: make().check(), tmp_path, named, "finite")


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -1e6, 5.0])
def test_apply_concepts_refuses_bad_strengths_and_leaves_the_base_alone(sd1, tmp_path, strength):
    from clif_core.concepts.apply import apply_concepts

    cf = make_concept_file(sd1, k=1, text_lora=False, unet_targets=("to_q",))
    tokenizer = sd1.text[0].tokenizer
    refused_by_api(lambda: apply_concepts(sd1, [(cf, strength)]), tmp_path, "LoRA strength", "Alice and Bob")
    assert sd1.text[0].tokenizer is tokenizer and not any("lora" in n for n, _ in sd1.unet.named_modules())


def test_the_sampler_stops_when_latents_turn_non_finite(tmp_path):
    from clif_core.sample.sampler import sample

    base = build_tiny_model("sd1", 0)
    with torch.no_grad():
        base.unet.conv_out.bias.fill_(float("nan"))
    err = refused_by_api(lambda: sample(base, _sample_config(steps=3)), tmp_path, "step 1 of 3", "NaN")
    assert "black" in str(err)


# ------------------------------------------------------------------------- concept files: one validator

@pytest.mark.parametrize("loader", ["api", "cli-inspect", "cli-export"])
@pytest.mark.parametrize("damage", sorted(BROKEN_FILES))
def test_every_concept_file_loader_refuses_damaged_files(good_file, tmp_path, capsys, damage, loader):
    bad = rewritten(good_file, tmp_path / f"{damage}.safetensors", BROKEN_FILES[damage])
    if loader == "api":
        refused_by_api(lambda: load_concept_file(bad), tmp_path, str(bad))
    elif loader == "cli-inspect":
        refused_by_cli(["concepts", "inspect", str(bad)], tmp_path, capsys, str(bad))
    else:
        refused_by_cli(["concepts", "export", str(bad), str(tmp_path / "models")], tmp_path, capsys, str(bad))


@pytest.mark.parametrize("damage", ["nan-alpha", "int8-lora-up", "inf-lora-up"])
def test_the_erasure_patch_loaders_refuse_damaged_patches(good_file, tmp_path, capsys, damage):
    from clif_core.erase.patch import load_erasure_patch

    def as_patch(t: dict, m: dict) -> None:
        for key in [k for k in t if k.startswith("bundle_emb.")]:
            del t[key]
        m.update({"clif.kind": "erasure", "clif.concepts": "[]",
                  "clif.metadata": json.dumps({"erased": [{"target": "pig", "alternative": None}]})})
        BROKEN_FILES[damage](t, m)

    bad = rewritten(good_file, tmp_path / "patch.safetensors", as_patch)
    refused_by_api(lambda: load_erasure_patch(bad), tmp_path, str(bad))
    refused_by_cli(["erase", "export", "--patch", str(bad), "--loras-dir", str(tmp_path / "loras")], tmp_path,
                   capsys, str(bad))


def test_an_erasure_file_without_erased_list_is_refused_by_the_sampler_too(sd1, tmp_path):
    import dataclasses

    from clif_core.sample.sampler import sample

    patch = dataclasses.replace(make_concept_file(sd1, names=(), text_lora=False), kind="erasure")
    refused_by_api(lambda: sample(sd1, _sample_config(steps=1), [patch]), tmp_path, "erased")


# --------------------------------------------------------------------------- import and overwrite rules


def _embedding(path: Path, value: float = 0.5) -> Path:
    save_file({"emb_params": torch.full((1, 32), value)}, str(path))
    return path


@pytest.mark.parametrize("value", [NaN, float("inf"), -float("inf")])
def test_import_refuses_non_finite_embeddings_and_writes_nothing(tmp_path, capsys, value):
    emb = _embedding(tmp_path / "alice.safetensors", value)
    refused_by_api(lambda: import_comfy(None, [emb], family="sd1"), tmp_path, "NaN or infinite")
    refused_by_cli(["concepts", "import", str(tmp_path / "out.safetensors"), "--embedding", str(emb),
                    "--family", "sd1"], tmp_path, capsys, "NaN or infinite")


def test_import_refuses_to_replace_a_file_unless_asked(tmp_path, capsys):
    emb = _embedding(tmp_path / "alice.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the user's own file")
    argv = ["concepts", "import", str(out), "--embedding", str(emb), "--family", "sd1"]
    refused_by_cli(argv, tmp_path, capsys, str(out), "--overwrite")
    assert main(argv + ["--overwrite"]) == 0
    assert load_concept_file(out).concepts[0].name == "alice"


OVERWRITE_CASES = {
    "train-out": ["train", "stage2", "--dataset", "D", "--base", "B", "--run-dir", "RUN", "--out", "EXISTING"],
    "train-both-out": ["train", "both", "--dataset", "D", "--base", "B", "--run-dir", "RUN", "--vision", "V",
                       "--out", "EXISTING"],
    "erase-merge": ["erase", "merge", "--base", "B", "--patch", "P", "--out", "EXISTING"],
    "erase-purify": ["erase", "purify", "--base", "B", "--patch", "P", "--image", "I", "--out", "EXISTING"],
    "model-to-single-file": ["model", "to-single-file", "B", "EXISTING"],
    "concepts-import": ["concepts", "import", "EXISTING", "--embedding", "E"],
}


@pytest.mark.parametrize("case", sorted(OVERWRITE_CASES))
def test_commands_refuse_to_replace_an_existing_file_before_any_work(tmp_path, capsys, case):
    existing = tmp_path / "kept.safetensors"
    existing.write_bytes(b"precious")
    argv = [str(existing) if a == "EXISTING" else str(tmp_path / a) if a in ("RUN",) else a
            for a in OVERWRITE_CASES[case]]
    refused_by_cli(argv, tmp_path, capsys, str(existing), "--overwrite")


def test_sample_refuses_existing_images_and_names_outside_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clif-0.png").write_bytes(b"precious")
    refused_by_cli(["sample", "--base", "B", "--prompt", "x", "--out", str(tmp_path / "out")], tmp_path, capsys,
                   "clif-0.png", "--overwrite")
    refused_by_cli(["sample", "--base", "B", "--prompt", "x", "--out", str(tmp_path / "out"), "--name", "../x"],
                   tmp_path, capsys, "--name")


# ------------------------------------------------------------------- datasets: paths and malformed files


def _dataset(root: Path, record: Any = None, manifest: Any = None, raw_meta: bytes | None = None,
             raw_manifest: bytes | None = None) -> Path:
    """A hand-written dataset folder (no pictures needed: the loader refuses before opening any)."""
    (root / "train").mkdir(parents=True)
    manifest = manifest if manifest is not None else {
        "format": "clif-augmented-dataset", "version": 1,
        "concepts": [{"name": "alice", "token": "<alice>", "class_word": "woman"}]}
    (root / "manifest.json").write_bytes(raw_manifest if raw_manifest is not None else json.dumps(manifest).encode())
    record = record if record is not None else {
        "file_name": "images/000000.png", "caption": "a photo of <alice>", "kind": "G", "layout": "single",
        "group": 0, "slots": [{"slot": "left", "source": "concept", "name": "alice", "text": "<alice>",
                               "box": [0, 0, 8, 8], "mask": "../masks/000000_left.png", "token": "<alice>",
                               "part": None, "source_index": 0}]}
    (root / "train" / "metadata.jsonl").write_bytes(raw_meta if raw_meta is not None else
                                                    (json.dumps(record) + "\n").encode())
    return root


def _record(**changes) -> dict:
    record = {"file_name": "images/000000.png", "caption": "a photo", "kind": "G", "layout": "single",
              "group": 0, "slots": []}
    record.update(changes)
    return record


def _slot(**changes) -> dict:
    slot = {"slot": "left", "source": "concept", "name": "alice", "text": "<alice>", "box": [0, 0, 8, 8],
            "mask": "../masks/000000_left.png", "token": "<alice>", "part": None, "source_index": 0}
    slot.update(changes)
    return slot


DATASET_CASES = {
    "file_name-parent": (dict(record=_record(file_name="../../../etc/passwd")), "file_name"),
    "file_name-absolute": (dict(record=_record(file_name="/etc/passwd")), "file_name"),
    "file_name-dotdot-inside": (dict(record=_record(file_name="images/../../manifest.json")), "file_name"),
    "mask-parent": (dict(record=_record(slots=[_slot(mask="../../../secret.png")])), "slot 0 mask"),
    "mask-absolute": (dict(record=_record(slots=[_slot(mask="/etc/hosts")])), "slot 0 mask"),
    "caption-number": (dict(record=_record(caption=7)), "'caption'"),
    "group-string": (dict(record=_record(group="0")), "'group'"),
    "slots-object": (dict(record=_record(slots={})), "'slots'"),
    "slot-box-short": (dict(record=_record(slots=[_slot(box=[0, 0])])), "'box'"),
    "line-is-list": (dict(raw_meta=b"[1, 2]\n"), "line 1"),
    "line-not-json": (dict(raw_meta=b"{not json\n"), "line 1"),
    "metadata-not-utf8": (dict(raw_meta=b'{"caption": "\xff\xfe"}\n'), "metadata.jsonl"),
    "manifest-list": (dict(raw_manifest=b"[]"), "manifest.json"),
    "manifest-not-utf8": (dict(raw_manifest=b"\xff\xfe{}"), "manifest.json"),
    "manifest-not-json": (dict(raw_manifest=b"{"), "manifest.json"),
    "manifest-concept-dotdot": (dict(manifest={"format": "clif-augmented-dataset", "version": 1,
                                               "concepts": [{"name": "..", "token": "<a>", "class_word": "man"}]}),
                                "'..'"),
    "manifest-concepts-not-list": (dict(manifest={"format": "clif-augmented-dataset", "version": 1,
                                                  "concepts": "alice"}), "'concepts'"),
}


@pytest.mark.parametrize("case", sorted(DATASET_CASES))
def test_dataset_reader_refuses_escaping_paths_and_malformed_files(tmp_path, case):
    from clif_core.augment.dataset import load_dataset

    kwargs, named = DATASET_CASES[case]
    root = _dataset(tmp_path / "ds", **kwargs)
    refused_by_api(lambda: load_dataset(root), tmp_path, named)


def test_train_refuses_an_escaping_dataset_before_loading_the_model(tmp_path, capsys):
    root = _dataset(tmp_path / "ds", record=_record(file_name="../../../etc/passwd"))
    refused_by_cli(["train", "stage2", "--dataset", str(root), "--base", str(tmp_path / "no-model"),
                    "--run-dir", str(tmp_path / "run")], tmp_path, capsys, "file_name", "metadata.jsonl")


# --------------------------------------------------------------------- run folders, models, vision towers

RUN_FILES = {"list": b"[]", "not-utf8": b"\xff\xfe", "not-json": b"{", "recipe-list":
             b'{"format": "clif-run", "recipe": []}'}


@pytest.mark.parametrize("content", sorted(RUN_FILES))
def test_a_damaged_run_json_is_named(tmp_path, content):
    from clif_core.training.run_folder import RunFolder

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_bytes(RUN_FILES[content])
    refused_by_api(lambda: RunFolder(tmp_path / "run").open({"a": 1}), tmp_path, "run.json")


def _copy_model(tiny, root: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny.diffusers_dir, root / "model"))


MODEL_FILES = {
    "model_index-list": ("model_index.json", b"[]"),
    "model_index-not-utf8": ("model_index.json", b"\xff{}"),
    "scheduler-not-json": ("scheduler/scheduler_config.json", b"not json"),
    "scheduler-list": ("scheduler/scheduler_config.json", b"[1]"),
    "unet-config-list": ("unet/config.json", b"[]"),
}


@pytest.mark.parametrize("case", sorted(MODEL_FILES))
def test_a_damaged_diffusers_folder_names_the_file(tiny_sd1, tmp_path, capsys, case):
    from clif_core.models.loader import load_base_model

    relative, content = MODEL_FILES[case]
    model = _copy_model(tiny_sd1, tmp_path)
    (model / relative).write_bytes(content)
    refused_by_api(lambda: load_base_model(model, device="cpu"), tmp_path, relative.split("/")[-1])
    refused_by_cli(["model", "info", str(model)], tmp_path, capsys, relative.split("/")[-1])


def test_a_vision_folder_holding_only_a_pickle_is_refused_without_unpickling(tiny_sd1, tmp_path):
    import shutil

    from clif_core.train.vision import load_vision_tower

    folder = Path(shutil.copytree(tiny_sd1.vision_dir, tmp_path / "vision"))
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    refused_by_api(lambda: load_vision_tower(folder, torch.device("cpu"), torch.float32), tmp_path,
                   "no .safetensors", "never loaded")


VISION_CASES = {
    "config-list": ("config.json", b"[]", "config.json"),
    "config-not-json": ("config.json", b"{", "config.json"),
    "preprocessor-mean-text": ("preprocessor_config.json", b'{"image_mean": "red"}', "image_mean"),
    "preprocessor-std-nan": ("preprocessor_config.json", b'{"image_std": [NaN, 1, 1]}', "image_std"),
}


@pytest.mark.parametrize("case", sorted(VISION_CASES))
def test_bad_vision_tower_configs_are_named(tiny_sd1, tmp_path, case):
    import shutil

    from clif_core.train.vision import load_vision_tower

    name, content, named = VISION_CASES[case]
    folder = Path(shutil.copytree(tiny_sd1.vision_dir, tmp_path / "vision"))
    (folder / name).write_bytes(content)
    refused_by_api(lambda: load_vision_tower(folder, torch.device("cpu"), torch.float32), tmp_path, named)


@pytest.mark.parametrize("metadata", ["not json", "[]", '{"hidden_size": "wide"}'])
def test_bad_vision_tower_file_metadata_is_named(tiny_sd1, tmp_path, metadata):
    from transformers import CLIPVisionModelWithProjection

    from clif_core.train.vision import CONFIG_METADATA_KEY, load_vision_tower, save_vision_tower_file

    model = CLIPVisionModelWithProjection.from_pretrained(tiny_sd1.vision_dir, local_files_only=True)
    path = save_vision_tower_file(model, tmp_path / "tower.safetensors")
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: metadata})
    refused_by_api(lambda: load_vision_tower(path, torch.device("cpu"), torch.float32), tmp_path,
                   str(path), CONFIG_METADATA_KEY)


# ------------------------------------------------------------------------------------- pictures and names


def test_a_decompression_bomb_in_a_concept_folder_is_skipped_with_a_warning_naming_it(tmp_path):
    from clif_core.concepts.spec import load_concept_folder
    from clif_core.progress import Reporter

    folder = tmp_path / "alice"
    folder.mkdir()
    picture(folder / "a.png")
    png_bomb(folder / "bomb.png")
    logged: list[str] = []
    concept = load_concept_folder(folder, "<alice>", "woman", reporter=Reporter(log=logged.append))
    assert len(concept.images) == 1
    assert any("bomb.png" in m and "decompression bomb" in m for m in logged)


def test_a_decompression_bomb_mask_is_refused_naming_it(tmp_path):
    from clif_core.concepts.spec import load_concept_folder

    folder = tmp_path / "alice"
    (folder / "masks").mkdir(parents=True)
    picture(folder / "a.png")
    png_bomb(folder / "masks" / "a.png")
    refused_by_api(lambda: load_concept_folder(folder, "<alice>", "woman"), tmp_path, "masks/a.png",
                   "decompression bomb")


@pytest.mark.parametrize("name", ["..", ".", "...", "!!"])
def test_concept_names_that_cannot_name_files_are_refused_before_work(tmp_path, name):
    from clif_core.concepts.spec import load_concept_folder

    folder = tmp_path / "pictures"
    folder.mkdir()
    picture(folder / "a.png")
    refused_by_api(lambda: load_concept_folder(folder, "<x>", "man", name=name), tmp_path, repr(name))


def test_a_folder_called_dotdot_is_refused_before_work(tmp_path, capsys):
    (tmp_path / "inner").mkdir()
    picture(tmp_path / "a.png")
    refused_by_cli(["augment", "--concept", str(tmp_path / "inner" / ".."), "<x>", "man", "--out",
                    str(tmp_path / "ds")], tmp_path, capsys, "'..'")


@pytest.mark.parametrize("make", ["bomb", "tiny", "garbage"])
def test_region_masks_are_refused_before_the_model_loads(tmp_path, capsys, make):
    mask = tmp_path / "mask.png"
    if make == "bomb":
        png_bomb(mask)
    elif make == "tiny":
        Image.new("L", (1, 1), 255).save(mask)
    else:
        mask.write_bytes(b"not a picture")
    refused_by_cli(["sample", "--base", str(tmp_path / "no-model"), "--prompt", "x", "--region", "a cat",
                    "--region-mask", str(mask), "--out", str(tmp_path / "out")], tmp_path, capsys, "mask")


@pytest.mark.parametrize("make", ["bomb", "tiny", "garbage"])
def test_purification_inputs_are_refused_before_the_model_loads(tmp_path, capsys, make):
    image = tmp_path / "in.png"
    if make == "bomb":
        png_bomb(image)
    elif make == "tiny":
        Image.new("RGB", (1, 1)).save(image)
    else:
        image.write_bytes(b"GIF89a")
    refused_by_cli(["erase", "purify", "--base", str(tmp_path / "no-model"), "--patch", str(tmp_path / "p"),
                    "--image", str(image), "--out", str(tmp_path / "out.png")], tmp_path, capsys, str(image))


def test_purify_refuses_a_tiny_picture_through_the_api(sd1, tmp_path):
    from clif_core.erase.purify import purify

    patch = make_concept_file(sd1, names=(), text_lora=False)
    patch.kind, patch.metadata = "erasure", {"erased": [{"target": "pig", "alternative": None}]}
    patch.base_fingerprint = sd1.fingerprint
    refused_by_api(lambda: purify(sd1, patch, Image.new("RGB", (1, 1)), steps=1), tmp_path, "1x1", "minimum")
