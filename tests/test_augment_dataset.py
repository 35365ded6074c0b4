"""The augmented dataset: determinism, captions and slots per kind, masks, reading back, preview,
atomic writes and cancel, common-concept sources and cache, bad options, and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clif_core.augment import cli as augment_cli
from clif_core.augment.common_concepts import (
    CommonConcept,
    generate_common,
    load_common_folder,
    resolve_common,
)
from clif_core.augment.compose import AugmentConfig, CaptionTemplates
from clif_core.augment.dataset import build_dataset, input_key, load_dataset, preview_grid
from clif_core.augment.fallback import FallbackSegmenter
from clif_core.augment.segment import UserMaskSegmenter
from clif_core.cli import main as clif_main
from clif_core.concepts.spec import Concept
from clif_core.errors import Cancelled, ClifError
from clif_core.progress import Reporter
from tests.helpers.datasets import figure

RES = 96


@pytest.fixture
def concepts() -> list[Concept]:
    alice = Concept(
        "alice", "<alice>", "woman",
        [figure((200, 40, 40), (40, 40, 190)), figure((200, 40, 40), (40, 40, 190), bg=(250, 250, 245), shift=4)],
        parts=["hair", "dress"],
    )
    bob = Concept("bob", "<bob>", "man", [figure((40, 170, 40), (190, 140, 30), bg=(30, 30, 35))])
    return [alice, bob]


@pytest.fixture
def common() -> list[CommonConcept]:
    chef = Image.new("RGB", (80, 80), (210, 215, 220))
    ImageDraw.Draw(chef).polygon([(40, 5), (75, 75), (5, 75)], fill=(20, 20, 20))
    jacket = Image.new("RGB", (90, 70), (240, 240, 240))
    ImageDraw.Draw(jacket).rectangle((10, 10, 80, 60), fill=(60, 90, 160))
    return [CommonConcept("chef", [chef]), CommonConcept("jean jacket", [jacket])]


def _config(**kw) -> AugmentConfig:
    base = dict(resolution=RES, n_global=6, n_region=6, n_mix=4, n_single=3, n_parts=2, seed=7)
    base.update(kw)
    return AugmentConfig(**base)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_a_bit_identical_dataset(tmp_path, concepts, common):
    a = build_dataset(concepts, tmp_path / "a", _config(), FallbackSegmenter(), common)
    b = build_dataset(concepts, tmp_path / "b", _config(), FallbackSegmenter(), common)
    ha, hb = _hashes(a), _hashes(b)
    assert len(ha) == 1 + 1 + 19 + (19 * 2 - 3)  # manifest, metadata, images, one mask per slot
    assert ha == hb
    c = build_dataset(concepts, tmp_path / "c", _config(seed=8), FallbackSegmenter(), common)
    hc = _hashes(c)
    assert hc != ha
    assert sum(hc[k] != ha[k] for k in ha if k.startswith("train/images")) > 10


def test_captions_and_slots_per_kind(tmp_path, concepts, common):
    ds = load_dataset(build_dataset(concepts, tmp_path / "d", _config(), FallbackSegmenter(), common))
    kinds = [r.kind for r in ds.records]
    assert kinds == ["G"] * 6 + ["R"] * 6 + ["M"] * 4 + ["single"] * 3
    tokens = {"<alice>", "<bob>"}
    for r in ds.records:
        texts = [s.text for s in r.slots]
        if r.kind == "single":
            assert [s.slot for s in r.slots] == ["center"] and r.caption == f"a photo of {texts[0]}"
            assert texts[0] in tokens and r.slots[0].part is None
            continue
        assert [s.slot for s in r.slots] == ["left", "right"]
        assert r.caption == f"a photo of {texts[0]} on the left and {texts[1]} on the right"
        sources = sorted(s.source for s in r.slots)
        if r.kind == "G":
            assert sources == ["common", "concept"]
            concept_slot = next(s for s in r.slots if s.source == "concept")
            assert concept_slot.text == concept_slot.token and concept_slot.part is None
            assert next(s for s in r.slots if s.source == "common").text in {"chef", "jean jacket"}
        elif r.kind == "R":
            parts = [s for s in r.slots if s.part is not None]
            assert parts and all(s.text == f"{s.token}'s {s.part}" for s in parts)
            assert all(s.part in {"hair", "dress", "upper part", "lower part"} for s in parts)
            assert any(f"<alice>'s {p}" in r.caption for p in ("hair", "dress")) or "<bob>'s" in r.caption
        else:
            assert sources == ["concept", "concept"] and {s.token for s in r.slots} == tokens
            assert all(s.part is None for s in r.slots)
    # the subject concept cycles: both concepts get Global and single samples
    assert {s.token for r in ds.records if r.kind == "G" for s in r.slots if s.token} == tokens
    # each pair is present in both slot orders
    groups: dict[int, list] = {}
    for r in ds.records:
        groups.setdefault(r.group, []).append(r)
    pairs = [g for g in groups.values() if g[0].kind != "single"]
    assert all(len(g) == 2 and [s.text for s in g[0].slots] == [s.text for s in g[1].slots][::-1] for g in pairs)


def test_slot_masks_sit_in_their_slot_on_a_white_canvas(tmp_path, concepts, common):
    ds = load_dataset(build_dataset(concepts, tmp_path / "d", _config(), FallbackSegmenter(), common))
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.image.shape == (3, RES, RES) and sample.image.dtype == torch.float32
        assert sample.masks.shape == (len(sample.record.slots), RES, RES) and sample.masks.dtype == torch.bool
        covered = sample.masks.any(0)
        assert torch.all(sample.image[:, ~covered] == 1.0), "outside the slot masks the canvas is white"
        for s, m in zip(sample.record.slots, sample.masks):
            x0, y0, x1, y1 = s.box
            assert m.any() and not m[:y0].any() and not m[y1:].any() and not m[:, :x0].any() and not m[:, x1:].any()
            if s.slot == "left":
                assert not m[:, RES // 2 :].any()
            if s.slot == "right":
                assert not m[:, : RES // 2].any()
        if len(sample.masks) == 2:
            assert not (sample.masks[0] & sample.masks[1]).any()


def test_top_bottom_layout_and_custom_templates(tmp_path, concepts, common):
    templates = CaptionTemplates(
        pair_top_bottom="{first} above {second}", single="just {first}", concept="{token} {class_word}", part="the {part} of {token}"
    )
    cfg = _config(layout="top_bottom", templates=templates, n_region=2)
    ds = load_dataset(build_dataset(concepts, tmp_path / "tb", cfg, FallbackSegmenter(), common))
    g = ds.records[0]
    assert [s.slot for s in g.slots] == ["top", "bottom"] and " above " in g.caption
    assert any(t in g.caption for t in ("<alice> woman", "<bob> man"))
    assert any(r.caption.startswith("the ") or " the " in r.caption for r in ds.records if r.kind == "R")
    assert ds.records[-1].caption in ("just <alice> woman", "just <bob> man")
    s = ds[0]
    top = s.masks[0]
    assert top.any() and not top[RES // 2 :].any()
    both = load_dataset(build_dataset(concepts, tmp_path / "both", _config(layout="both", n_global=12), FallbackSegmenter(), common))
    assert {r.layout for r in both.records if r.kind == "G"} == {"left_right", "top_bottom"}


def test_layout_is_an_imagefolder_with_metadata_and_manifest(tmp_path, concepts, common):
    root = build_dataset(concepts, tmp_path / "hf", _config(), FallbackSegmenter(), common)
    lines = [json.loads(x) for x in (root / "train" / "metadata.jsonl").read_text().splitlines()]
    images_in_train = sorted(str(p.relative_to(root / "train")) for p in (root / "train").rglob("*.png"))
    assert sorted(x["file_name"] for x in lines) == images_in_train, "every image in train/ has one metadata line"
    assert all({"file_name", "caption", "kind", "slots"} <= set(x) for x in lines)
    for x in lines:
        for s in x["slots"]:
            assert (root / "train" / s["mask"]).resolve().is_file() and s["mask"].startswith("../masks/")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "clif-augmented-dataset" and manifest["version"] == 1 and manifest["seed"] == 7
    assert manifest["counts"] == {"G": 6, "R": 6, "M": 4, "single": 3} and manifest["n_samples"] == 19
    assert [c["token"] for c in manifest["concepts"]] == ["<alice>", "<bob>"]
    assert manifest["concepts"][0]["part_names"] == ["dress", "hair"]
    assert manifest["segmenter"].startswith("fallback(")
    assert AugmentConfig.from_dict(manifest["config"]) == _config()


def test_preview_grid_draws_captions(tmp_path, concepts, common):
    ds = load_dataset(build_dataset(concepts, tmp_path / "p", _config(), FallbackSegmenter(), common))
    grid = preview_grid(ds, n=6, columns=3, cell=128)
    assert grid.width == 3 * 128 and grid.height > 2 * 128
    arr = np.asarray(grid)
    caption_band = arr[128 : 128 + 12, :128]
    assert (caption_band < 100).any(), "caption text is drawn under the first sample"
    assert preview_grid(ds, n=100).width == 4 * 256  # n is capped by the dataset size


def test_existing_dataset_is_kept_until_the_new_one_is_complete(tmp_path, concepts, common):
    out = tmp_path / "ds"
    build_dataset(concepts, out, _config(), FallbackSegmenter(), common)
    before = _hashes(out)
    with pytest.raises(ClifError, match=r"ds already exists"):
        build_dataset(concepts, out, _config(), FallbackSegmenter(), common)

    calls = []

    def stop_after_some() -> bool:
        calls.append(1)
        return len(calls) > 12

    with pytest.raises(Cancelled):
        build_dataset(concepts, out, _config(seed=1), FallbackSegmenter(), common,
                      reporter=Reporter(should_stop=stop_after_some, log=lambda m: None), overwrite=True)
    assert _hashes(out) == before, "a cancelled build leaves the previous dataset as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "no temporary folder is left behind"

    steps = []
    build_dataset(concepts, out, _config(seed=1), FallbackSegmenter(), common,
                  reporter=Reporter(progress=lambda s, t, p=None: steps.append((s, t, p)), log=lambda m: None), overwrite=True)
    assert _hashes(out) != before
    assert [s for s, _, _ in steps] == list(range(1, 3 + 2 + 19 + 1)) and steps[-1][1] == 24
    assert isinstance(steps[-1][2], Image.Image)

    not_a_dataset = tmp_path / "photos"
    not_a_dataset.mkdir()
    (not_a_dataset / "keep.txt").write_text("mine")
    with pytest.raises(ClifError, match=r"photos exists and is not a dataset folder"):
        build_dataset(concepts, not_a_dataset, _config(), FallbackSegmenter(), common, overwrite=True)
    assert (not_a_dataset / "keep.txt").read_text() == "mine"


def test_requests_that_the_inputs_cannot_satisfy(tmp_path, concepts, common):
    seg = FallbackSegmenter()
    with pytest.raises(ClifError, match=r"n_mix=4 Mix samples need at least two concepts \(got 1"):
        build_dataset(concepts[:1], tmp_path / "x", _config(), seg, common)
    with pytest.raises(ClifError, match=r"n_global=6 Global samples need common concepts"):
        build_dataset(concepts, tmp_path / "x", _config(), seg, [])
    masked = Concept("m", "<m>", "cat", concepts[0].images[:1], [np.ones((96, 80), bool)])
    masked_common = [CommonConcept(c.word, c.images, [np.ones(c.images[0].size[::-1], bool)]) for c in common]
    with pytest.raises(ClifError, match=r"concept 'm' has no part regions, which n_region=6 Region samples need"):
        build_dataset([masked], tmp_path / "x", _config(n_mix=0), UserMaskSegmenter(), masked_common)
    with pytest.raises(ClifError, match=r"common word 'chef' image 0 has no mask, and the 'masks' segmenter"):
        build_dataset([masked], tmp_path / "x", _config(n_mix=0), UserMaskSegmenter(), common)
    with pytest.raises(ClifError, match=r"Region samples have nothing to put beside its parts"):
        build_dataset([concepts[1]], tmp_path / "x", _config(n_mix=0, n_global=0, n_parts=1), seg, [])
    with pytest.raises(ClifError, match=r"token\(s\) \['chef'\] are also common words"):
        build_dataset([Concept("c", "chef", "man", concepts[1].images)], tmp_path / "x", _config(), seg, common)
    with pytest.raises(ClifError, match=r"caption template pair_left_right = 'a photo of \{first\}' must contain \{second\}"):
        build_dataset(concepts, tmp_path / "x", _config(templates=CaptionTemplates(pair_left_right="a photo of {first}")), seg, common)
    with pytest.raises(ClifError, match=r"caption template part = .* is not valid .*may use only \{token\}, \{part\}, \{class_word\}"):
        build_dataset(concepts, tmp_path / "x", _config(templates=CaptionTemplates(part="{token} {part} {colour}")), seg, common)
    with pytest.raises(ClifError, match=r"caption template single = .* is not valid"):
        build_dataset(concepts, tmp_path / "x", _config(templates=CaptionTemplates(single="{first} {class_word}")), seg, common)
    with pytest.raises(ClifError, match=r"layout 'diagonal' is unknown"):
        build_dataset(concepts, tmp_path / "x", _config(layout="diagonal"), seg, common)
    with pytest.raises(ClifError, match=r"every sample count is 0"):
        build_dataset(concepts, tmp_path / "x", _config(n_global=0, n_region=0, n_mix=0, n_single=0), seg, common)
    with pytest.raises(ClifError, match=r"sample count for kind R is -1"):
        build_dataset(concepts, tmp_path / "x", _config(n_region=-1), seg, common)
    assert not (tmp_path / "x").exists()


def test_counts_from_ratios():
    cfg = AugmentConfig.from_ratios(101, global_=4, region=3, mix=2, single=1, resolution=64)
    assert sum(cfg.counts().values()) == 101 and cfg.n_global == 41 and cfg.n_mix == 20 and cfg.resolution == 64
    with pytest.raises(ClifError, match=r"ratios"):
        AugmentConfig.from_ratios(10, 0, 0, 0, 0)


def test_load_dataset_refuses_what_it_cannot_read(tmp_path, concepts, common):
    with pytest.raises(ClifError, match=r"nothing is not an augmented dataset: manifest\.json is missing"):
        load_dataset(tmp_path / "nothing")
    root = build_dataset(concepts, tmp_path / "ds", _config(), FallbackSegmenter(), common)
    (root / "masks" / "000003_right.png").unlink()
    with pytest.raises(ClifError, match=r"incomplete: 1 file\(s\) missing, e\.g\. \[.*000003_right\.png"):
        load_dataset(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ClifError, match=r"dataset version 99, this pack reads version 1"):
        load_dataset(root)
    manifest["version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "train" / "metadata.jsonl").write_text('{"file_name": "images/000000.png"}\n')
    with pytest.raises(ClifError, match=r"metadata\.jsonl line 1: field 'slots' is missing"):
        load_dataset(root)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_reuse_returns_a_dataset_built_from_the_same_inputs_untouched(tmp_path, concepts, common):
    out = tmp_path / "ds"
    seg = FallbackSegmenter()
    build_dataset(concepts, out, _config(), seg, common, reuse=True)
    assert json.loads((out / "manifest.json").read_text())["input_key"] == input_key(concepts, _config(), seg, common)
    stamps = _mtimes(out)
    lines: list[str] = []
    assert build_dataset(concepts, out, _config(), seg, common, reuse=True, reporter=Reporter(log=lines.append)) == out
    assert _mtimes(out) == stamps and any("up to date" in line for line in lines)

    # What changes the key: the config, a pixel, a mask, a name, the segmenter's settings, the common pictures.
    key = input_key(concepts, _config(), seg, common)
    assert input_key(concepts, _config(seed=8), seg, common) != key
    touched = [Concept(c.name, c.token, c.class_word, [im.copy() for im in c.images], parts=list(c.parts)) for c in concepts]
    touched[1].images[0].putpixel((0, 0), (0, 0, 0))
    assert input_key(touched, _config(), seg, common) != key
    masked = [Concept(c.name, c.token, c.class_word, c.images, parts=list(c.parts)) for c in concepts]
    masked[1].masks[0] = np.ones(masked[1].images[0].size[::-1], bool)
    assert input_key(masked, _config(), seg, common) != key
    assert input_key(concepts, _config(), FallbackSegmenter(min_contrast=20), common) != key
    assert input_key(concepts, _config(), seg, common[:1]) != key
    renamed = [Concept("carol", "<carol>", "woman", concepts[0].images, parts=["hair", "dress"]), concepts[1]]
    assert input_key(renamed, _config(), seg, common) != key

    # Another key is no reuse: refused without overwrite, rebuilt with it; an incomplete dataset is rebuilt.
    with pytest.raises(ClifError, match=r"ds already exists"):
        build_dataset(concepts, out, _config(seed=8), seg, common, reuse=True)
    build_dataset(concepts, out, _config(seed=8), seg, common, reuse=True, overwrite=True)
    assert load_dataset(out).manifest["seed"] == 8
    (out / "train" / "images" / "000000.png").unlink()
    build_dataset(concepts, out, _config(seed=8), seg, common, reuse=True, overwrite=True)
    assert len(load_dataset(out)) == 19


def test_preview_grid_of_one_kind(tmp_path, concepts, common):
    ds = load_dataset(build_dataset(concepts, tmp_path / "p", _config(n_single=0), FallbackSegmenter(), common))
    mix = preview_grid(ds, n=8, columns=4, cell=64, kinds=("M",))
    assert mix.width == 4 * 64, "the 4 Mix samples fill one row"
    with pytest.raises(ClifError, match=r"has no samples of kind single to preview"):
        preview_grid(ds, kinds=("single",))


def test_generated_common_pictures_without_a_findable_subject_are_used_whole(tmp_path, concepts):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    lines: list[str] = []
    config = _config(n_region=0, n_mix=0, n_single=0, n_global=2)
    ds = load_dataset(build_dataset(concepts[:1], tmp_path / "g", config, FallbackSegmenter(),
                                    [CommonConcept("dog", [noise], generated=True)], reporter=Reporter(log=lines.append)))
    assert any("common word 'dog' image 0" in line and "whole picture is used" in line for line in lines)
    slot = next(s for s in ds.records[0].slots if s.source == "common")
    x0, y0, x1, y1 = slot.box
    mask = ds[0].masks[[s.source for s in ds.records[0].slots].index("common")].numpy()
    assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0), "the whole picture is pasted"
    with pytest.raises(ClifError, match=r"common word 'dog' image 0"):  # a user's own picture is theirs to fix
        build_dataset(concepts[:1], tmp_path / "u", config, FallbackSegmenter(), [CommonConcept("dog", [noise])])


def test_fingerprint_is_only_asked_for_when_a_word_must_be_generated(tmp_path):
    root = tmp_path / "common"
    (root / "chef").mkdir(parents=True)
    _draw_word("chef", 1, 0)[0].save(root / "chef" / "1.png")

    def no_model() -> str:
        raise AssertionError("the base model was loaded although every word has pictures")

    assert [c.word for c in resolve_common(["chef"], folder=root, generate=_draw_word, fingerprint=no_model,
                                           cache_dir=tmp_path / "c", n=1)] == ["chef"]
    asked = []
    got = resolve_common(["chef", "dog"], folder=root, generate=_draw_word,
                         fingerprint=lambda: asked.append(1) or "fp", cache_dir=tmp_path / "c", n=1)
    assert asked == [1] and got[1].generated and not got[0].generated


def test_lazy_model_generator_loads_the_model_only_when_needed_and_draws_with_the_sampler():
    from clif_core.augment.common_concepts import lazy_model_generator
    from clif_core.models.tiny import TINY_IMAGE_SIZE, build_tiny_model

    loads: list[int] = []

    def load():
        loads.append(1)
        return build_tiny_model("sd1", seed=0)

    steps: list[tuple[int, int]] = []
    generate, fingerprint = lazy_model_generator(load, steps=2, reporter=Reporter(progress=lambda s, t, p=None: steps.append((s, t))))
    assert loads == []
    key = fingerprint()
    assert loads == [1] and key.endswith("/euler/steps=2/cfg=7.0")
    pair = generate("a photo of dog", 2, 5)
    assert loads == [1] and [im.size for im in pair] == [(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)] * 2
    assert steps[-1] == (2, 2)
    # Picture j uses seed + j: the second picture of seed 5 is the first of seed 6, whatever n is (batched
    # and single runs differ only by float summation order).
    alone = np.asarray(generate("a photo of dog", 1, 6)[0]).astype(int)
    assert np.abs(alone - np.asarray(pair[1])).max() <= 2
    assert np.abs(np.asarray(pair[0]).astype(int) - np.asarray(pair[1])).mean() > 10
    other, _ = lazy_model_generator(load, steps=1, reporter=Reporter(should_stop=lambda: True))
    with pytest.raises(Cancelled):
        other("a photo of dog", 1, 0)


# ------------------------------------------------------------------------------------ common concepts


def _draw_word(prompt: str, n: int, seed: int) -> list[Image.Image]:
    """A stand-in for the base-model sampler: a deterministic picture per (prompt, index, seed)."""
    rng = np.random.default_rng([seed, len(prompt), n])
    out = []
    for _ in range(n):
        img = Image.new("RGB", (72, 72), (230, 230, 230))
        colour = tuple(int(c) for c in rng.integers(0, 150, 3))
        ImageDraw.Draw(img).rectangle((15, 15, 57, 57), fill=colour)
        out.append(img)
    return out


def test_common_images_are_generated_once_and_cached_per_base_model(tmp_path):
    calls: list[tuple[str, int, int]] = []

    def generate(prompt, n, seed):
        calls.append((prompt, n, seed))
        return _draw_word(prompt, n, seed)

    first = generate_common(["chef", "dog"], generate, "sd15:abc", tmp_path / "cache", n=2, seed=3)
    assert calls == [("a photo of chef", 2, 3), ("a photo of dog", 2, 3)]
    assert [c.word for c in first] == ["chef", "dog"] and len(first[0].images) == 2
    again = generate_common(["chef", "dog"], generate, "sd15:abc", tmp_path / "cache", n=2, seed=3)
    assert len(calls) == 2, "cached pictures are reused"
    assert np.array_equal(np.asarray(again[0].images[1]), np.asarray(first[0].images[1]))
    generate_common(["chef"], generate, "sdxl:def", tmp_path / "cache", n=2, seed=3)
    assert len(calls) == 3, "another base model does not reuse the cache"
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 3 and all(e.startswith(("chef-", "dog-")) for e in entries)
    # a damaged cache entry is generated again
    damaged = next((tmp_path / "cache").glob("dog-*"))
    (damaged / "000.png").write_bytes(b"broken")
    generate_common(["dog"], generate, "sd15:abc", tmp_path / "cache", n=2, seed=3)
    assert calls[-1] == ("a photo of dog", 2, 3)
    with pytest.raises(ClifError, match=r"returned 1 picture\(s\) of 'cat'; 2 were asked for"):
        generate_common(["cat"], lambda p, n, s: _draw_word(p, 1, s), "sd15:abc", tmp_path / "cache", n=2)


def test_common_words_from_a_folder_then_generation(tmp_path):
    root = tmp_path / "common"
    for folder in ("chef", "jean_jacket"):
        (root / folder).mkdir(parents=True)
        _draw_word(folder, 1, 0)[0].save(root / folder / "1.png")
    loaded = load_common_folder(root)
    assert [c.word for c in loaded] == ["chef", "jean jacket"]
    mixed = resolve_common(["jean jacket", "dog"], folder=root, generate=_draw_word, fingerprint="fp", cache_dir=tmp_path / "c", n=1)
    assert [c.word for c in mixed] == ["jean jacket", "dog"] and mixed[0].sources[0].endswith("jean_jacket/1.png")
    with pytest.raises(ClifError, match=r"common word\(s\) \['dog'\] have no pictures in .*common"):
        resolve_common(["chef", "dog"], folder=root)
    with pytest.raises(ClifError, match=r"common word 'cat' has no folder in"):
        load_common_folder(root, ["cat"])


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_builds_a_dataset_from_folders(tmp_path, concepts, common):
    for c in concepts:
        folder = tmp_path / "in" / c.name
        folder.mkdir(parents=True)
        for i, img in enumerate(c.images):
            img.save(folder / f"{i}.png")
    for cc in common:
        folder = tmp_path / "common" / cc.word.replace(" ", "_")
        folder.mkdir(parents=True)
        cc.images[0].save(folder / "0.png")
    out = tmp_path / "out"
    assert clif_main([
        "augment", "--concept", str(tmp_path / "in" / "bob"), "<bob>", "man", "--mix", "0", "--global", "0",
        "--region", "0", "--single", "2", "--resolution", str(RES), "--out", str(tmp_path / "via_main"),
    ]) == 0
    assert len(load_dataset(tmp_path / "via_main")) == 2
    parser = argparse.ArgumentParser(prog="clif")
    augment_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "augment", "--concept", str(tmp_path / "in" / "alice"), "<alice>", "woman", "hair,dress",
        "--concept", str(tmp_path / "in" / "bob"), "<bob>", "man",
        "--common-dir", str(tmp_path / "common"), "--resolution", str(RES), "--global", "4", "--region", "2",
        "--mix", "2", "--single", "2", "--parts", "2", "--seed", "5", "--out", str(out),
    ])
    assert args.func(args) == 0
    ds = load_dataset(out)
    assert len(ds) == 10 and ds.manifest["seed"] == 5
    assert {c["name"] for c in ds.manifest["concepts"]} == {"alice", "bob"}
    assert {c["word"] for c in ds.manifest["common"]} == {"chef", "jean jacket"}
    bad = parser.parse_args(["augment", "--concept", str(tmp_path / "in" / "bob"), "<bob>", "--out", str(tmp_path / "o2")])
    with pytest.raises(ClifError, match=r"--concept .*bob <bob>: give FOLDER TOKEN CLASS"):
        bad.func(bad)
    nosam = parser.parse_args(["augment", "--concept", str(tmp_path / "in" / "bob"), "<bob>", "man", "--segmenter", "sam",
                               "--out", str(tmp_path / "o3")])
    with pytest.raises(ClifError, match=r"--segmenter sam needs --sam-checkpoint"):
        nosam.func(nosam)


def test_a_part_list_that_the_picture_cannot_fill_is_reported(tmp_path, concepts, common):
    lines: list[str] = []
    four = Concept("alice", "<alice>", "woman", concepts[0].images[:1], parts=["hat", "hair", "dress", "shoes"])
    ds = load_dataset(build_dataset([four], tmp_path / "n", _config(n_mix=0), FallbackSegmenter(), common,
                                    reporter=Reporter(log=lines.append)))
    assert any("gave 2 part region(s) for the 4 part names" in line and "upper part, lower part" in line for line in lines)
    assert {s.part for r in ds.records if r.kind == "R" for s in r.slots if s.part} == {"upper part", "lower part"}


def test_cli_generates_common_words_with_a_base_model_once(tmp_path, concepts, tiny_sd1):
    folder = tmp_path / "in" / "bob"
    folder.mkdir(parents=True)
    concepts[1].images[0].save(folder / "0.png")
    args = ["augment", "--concept", str(folder), "<bob>", "man", "--common", "dog", "--base-model",
            str(tiny_sd1.single_file), "--common-images", "1", "--common-steps", "1", "--global", "2", "--region", "0",
            "--mix", "0", "--single", "1", "--resolution", str(RES), "--out", str(tmp_path / "ds")]
    assert clif_main(args) == 0
    [entry] = (tmp_path / "clif_common").glob("dog-*")
    assert sorted(p.name for p in entry.iterdir()) == ["000.png", "info.json"]
    stamp = (entry / "000.png").stat().st_mtime_ns
    assert clif_main(args[:-2] + ["--seed", "3", "--overwrite", "--out", str(tmp_path / "ds")]) == 0
    assert (entry / "000.png").stat().st_mtime_ns == stamp, "cached pictures are not drawn again"
    ds = load_dataset(tmp_path / "ds")
    assert ds.manifest["seed"] == 3 and ds.manifest["common"] == [{"word": "dog", "images": 1}]
