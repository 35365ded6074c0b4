"""Concept loading: every image mode, EXIF orientation, masks, tensors, and each bad-input message."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clif_core.concepts.spec import (
    Concept,
    check_tokens,
    concept_from_tensors,
    load_concept_folder,
    read_image,
    validate_concepts,
)
from clif_core.errors import ClifError
from clif_core.models.clip_bpe import bytes_to_unicode
from clif_core.progress import Reporter


def _figure(size=(96, 80), bg=(240, 240, 240), fg=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, bg)
    ImageDraw.Draw(img).rectangle((20, 10, 60, 70), fill=fg)
    return img


def _collect() -> tuple[Reporter, list[str]]:
    lines: list[str] = []
    return Reporter(log=lines.append), lines


def test_modes_are_flattened_to_rgb_and_alpha_becomes_mask(tmp_path):
    folder = tmp_path / "alice"
    folder.mkdir()
    rgba = Image.new("RGBA", (80, 80), (0, 0, 255, 0))
    ImageDraw.Draw(rgba).rectangle((10, 10, 49, 49), fill=(255, 0, 0, 255))
    rgba.save(folder / "a_rgba.png")
    Image.new("L", (80, 80), 90).save(folder / "b_gray.png")
    _figure().convert("P", palette=Image.ADAPTIVE, colors=8).save(folder / "c_palette.png")
    Image.fromarray((np.arange(80 * 80).reshape(80, 80) * 10).astype(np.uint16)).save(folder / "d_16bit.png")
    _figure().save(folder / "e.webp", lossless=True)
    _figure().save(folder / "f.jpg", quality=95)

    c = load_concept_folder(folder, "<alice>", "woman")
    assert c.name == "alice" and len(c.images) == 6
    assert all(im.mode == "RGB" for im in c.images)
    alpha_mask = c.masks[0]
    assert alpha_mask is not None and alpha_mask.sum() == 40 * 40 and alpha_mask[10:50, 10:50].all()
    arr = np.asarray(c.images[0])
    assert tuple(arr[0, 0]) == (255, 255, 255), "transparent area must be composited on white"
    assert tuple(arr[20, 20]) == (255, 0, 0)
    assert c.masks[1] is None and tuple(np.asarray(c.images[1])[0, 0]) == (90, 90, 90)
    assert c.masks[2] is None and c.images[2].size == (96, 80)
    sixteen = np.asarray(c.images[3])[..., 0]
    assert sixteen.max() > 200 and sixteen.min() == 0, "16-bit gray must be scaled, not clipped"
    assert c.sources[4].endswith("e.webp")


def test_exif_orientation_is_applied_and_masks_must_match_the_upright_image(tmp_path):
    folder = tmp_path / "bob"
    (folder / "masks").mkdir(parents=True)
    raw = _figure(size=(120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    raw.save(folder / "p.jpg", exif=exif.tobytes(), quality=95)
    img, _, rotated = read_image(folder / "p.jpg")
    assert rotated and img.size == (80, 120)

    Image.new("L", (120, 80), 255).save(folder / "masks" / "p.png")  # stored size, not upright
    with pytest.raises(ClifError, match=r"masks/p\.png is 120x80 but its image \(p\.jpg\) is 80x120.*EXIF"):
        load_concept_folder(folder, "<bob>", "man")

    upright = Image.new("L", (80, 120), 0)
    ImageDraw.Draw(upright).rectangle((5, 5, 40, 60), fill=255)
    upright.save(folder / "masks" / "p.png")
    c = load_concept_folder(folder, "<bob>", "man")
    assert c.masks[0].shape == (120, 80) and c.masks[0].sum() == 36 * 56


def test_mask_files_and_named_part_masks(tmp_path):
    folder = tmp_path / "carol"
    (folder / "masks").mkdir(parents=True)
    _figure().save(folder / "one.png")
    _figure().save(folder / "two.png")
    whole = Image.new("L", (96, 80), 0)
    ImageDraw.Draw(whole).rectangle((20, 10, 60, 70), fill=255)
    whole.save(folder / "masks" / "one.png")
    top = Image.new("L", (96, 80), 0)
    ImageDraw.Draw(top).rectangle((20, 10, 60, 30), fill=255)
    top.save(folder / "masks" / "one.hair.png")
    Image.new("L", (96, 80), 255).save(folder / "masks" / "zzz.png")  # matches no image
    reporter, lines = _collect()
    c = load_concept_folder(folder, "<carol>", "girl", reporter=reporter)
    assert c.parts == ["hair"]
    assert c.masks[0].sum() == 41 * 61 and c.masks[1] is None
    assert set(c.part_masks[0]) == {"hair"} and c.part_masks[1] == {}
    assert any("zzz.png" in line and "match no image" in line for line in lines)

    with pytest.raises(ClifError, match=r"one\.hair\.png names part 'hair', which is not in the part list"):
        load_concept_folder(folder, "<carol>", "girl", parts=["face"])


def test_large_images_are_downscaled_with_their_masks(tmp_path):
    folder = tmp_path / "big"
    (folder / "masks").mkdir(parents=True)
    _figure(size=(400, 200)).save(folder / "x.png")
    m = Image.new("L", (400, 200), 0)
    ImageDraw.Draw(m).rectangle((0, 0, 199, 199), fill=255)
    m.save(folder / "masks" / "x.png")
    c = load_concept_folder(folder, "<big>", "thing", max_side=100)
    assert c.images[0].size == (100, 50) and c.masks[0].shape == (50, 100)
    assert c.masks[0][:, :50].all() and not c.masks[0][:, 50:].any()


def test_unreadable_files_are_skipped_with_a_warning_that_lists_them(tmp_path):
    folder = tmp_path / "dave"
    folder.mkdir()
    _figure().save(folder / "good.png")
    buf = io.BytesIO()
    _figure(size=(200, 200)).save(buf, format="PNG")
    (folder / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    _figure(size=(200, 200)).save(buf, format="JPEG")
    (folder / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "fake.webp").write_text("not an image")
    (folder / "notes.txt").write_text("hello")
    (folder / "extra").mkdir()
    reporter, lines = _collect()
    c = load_concept_folder(folder, "<dave>", "man", reporter=reporter)
    assert [os.path.basename(s) for s in c.sources] == ["good.png"]
    (warning,) = lines
    for name in ("cut.png", "cut.jpg", "fake.webp", "notes.txt", "extra/"):
        assert name in warning
    assert "skipped 5 file(s)" in warning


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ClifError, match=r"missing.*does not exist"):
        load_concept_folder(tmp_path / "missing", "<x>", "man")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClifError, match=r"empty.*is empty"):
        load_concept_folder(empty, "<x>", "man")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(ClifError, match=r"no readable image in .*junk: a\.png"):
        load_concept_folder(junk, "<x>", "man")
    small = tmp_path / "small"
    small.mkdir()
    _figure(size=(96, 40)).save(small / "tiny.png")
    with pytest.raises(ClifError, match=r"tiny\.png is 96x40, below the minimum of 64 px"):
        load_concept_folder(small, "<x>", "man")
    clear = tmp_path / "clear"
    clear.mkdir()
    Image.new("RGBA", (80, 80), (0, 0, 0, 0)).save(clear / "ghost.png")
    with pytest.raises(ClifError, match=r"ghost\.png is fully transparent"):
        load_concept_folder(clear, "<x>", "man")


def test_bad_mask_files(tmp_path):
    folder = tmp_path / "erin"
    (folder / "masks").mkdir(parents=True)
    _figure().save(folder / "a.png")
    Image.new("L", (50, 50), 255).save(folder / "masks" / "a.png")
    with pytest.raises(ClifError, match=r"masks/a\.png is 50x50 but its image \(a\.png\) is 96x80"):
        load_concept_folder(folder, "<erin>", "girl")
    Image.new("L", (96, 80), 0).save(folder / "masks" / "a.png")
    with pytest.raises(ClifError, match=r"masks/a\.png \(a\.png\) is empty"):
        load_concept_folder(folder, "<erin>", "girl")
    (folder / "masks" / "a.png").write_text("garbage")
    with pytest.raises(ClifError, match=r"masks/a\.png \(a\.png\) cannot be read"):
        load_concept_folder(folder, "<erin>", "girl")


def test_field_errors():
    with pytest.raises(ClifError, match=r"placeholder token '<a b>' must be one word"):
        concept_from_tensors("x", "<a b>", "man", torch.rand(1, 64, 64, 3))
    with pytest.raises(ClifError, match=r"class word is empty"):
        concept_from_tensors("x", "<x>", " ", torch.rand(1, 64, 64, 3))
    with pytest.raises(ClifError, match=r"part name 'hair!' must be letters"):
        concept_from_tensors("x", "<x>", "man", torch.rand(1, 64, 64, 3), parts=["hair!"])


def test_concept_from_comfy_tensors():
    images = torch.zeros(2, 64, 72, 3)
    images[:, 10:30, 20:40, 0] = 1.0
    masks = torch.zeros(2, 64, 72)
    masks[:, 10:30, 20:40] = 1.0
    c = concept_from_tensors("eve", "<eve>", "woman", images, masks, parts=["hat"])
    assert len(c.images) == 2 and c.images[0].size == (72, 64) and c.images[0].mode == "RGB"
    assert tuple(np.asarray(c.images[0])[15, 25]) == (255, 0, 0)
    assert c.masks[0].sum() == 400 and c.parts == ["hat"] and c.sources[1] == "eve images[1]"
    single = concept_from_tensors("eve", "<eve>", "woman", images[0], masks[0])
    assert len(single.images) == 1 and single.masks[0].sum() == 400
    assert concept_from_tensors("eve", "<eve>", "woman", images).masks == [None, None]

    with pytest.raises(ClifError, match=r"images must be an IMAGE batch shaped \[B, H, W, 3\]; got \(2, 3, 64, 72\)"):
        concept_from_tensors("eve", "<eve>", "woman", images.permute(0, 3, 1, 2))
    with pytest.raises(ClifError, match=r"1 mask\(s\) for 2 image\(s\)"):
        concept_from_tensors("eve", "<eve>", "woman", images, masks[:1])
    with pytest.raises(ClifError, match=r"masks\[0\] is 40x32 but images\[0\] is 72x64"):
        concept_from_tensors("eve", "<eve>", "woman", images, torch.ones(2, 32, 40))
    empty = masks.clone()
    empty[1] = 0
    with pytest.raises(ClifError, match=r"masks\[1\] is empty"):
        concept_from_tensors("eve", "<eve>", "woman", images, empty)
    with pytest.raises(ClifError, match=r"each image is 72x32, below the minimum of 64"):
        concept_from_tensors("eve", "<eve>", "woman", torch.rand(1, 32, 72, 3))
    with pytest.raises(ClifError, match=r"NaN"):
        concept_from_tensors("eve", "<eve>", "woman", torch.full((1, 64, 64, 3), float("nan")))


def test_validate_concepts_across_concepts():
    img = _figure()
    a = Concept("a", "<a>", "man", [img])
    with pytest.raises(ClifError, match=r"placeholder token '<a>' is used by two concepts, 'a' and 'b'"):
        validate_concepts([a, Concept("b", "<a>", "man", [img])])
    with pytest.raises(ClifError, match=r"two concepts are named 'a'"):
        validate_concepts([a, Concept("a", "<b>", "man", [img])])
    with pytest.raises(ClifError, match=r"token 'man' equals a class word"):
        validate_concepts([Concept("c", "man", "man", [img])])
    with pytest.raises(ClifError, match=r"mask of b image 0 is 3x3 but the image is 96x80"):
        validate_concepts([Concept("b", "<b>", "man", [img], [np.ones((3, 3), bool)], sources=["b image 0"])])
    with pytest.raises(ClifError, match=r"masks has 2 entries but there are 1 images"):
        Concept("b", "<b>", "man", [img], [None, None])
    with pytest.raises(ClifError, match=r"no concept given"):
        validate_concepts([])


def _tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    # byte-level alphabet as CLIP's BPE uses it, plus one merged word ("dog")
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["do", "dog</w>", "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[("d", "o"), ("do", "g</w>")])


def test_check_tokens_against_a_real_clip_tokenizer():
    tok = _tiny_clip_tokenizer()
    img = _figure()
    ok = Concept("alice", "<alice>", "woman", [img])
    check_tokens([ok], [tok])
    with pytest.raises(ClifError, match=r"placeholder token 'dog' is an existing word of tokenizer"):
        check_tokens([ok, Concept("rex", "dog", "animal", [img])], [tok])
    tok.add_tokens(["<alice>"])

    class Slot:  # the shape of models.base.TextEncoderSlot
        name = "clip_l"
        tokenizer = tok

    with pytest.raises(ClifError, match=r"'<alice>' is already added to tokenizer clip_l"):
        check_tokens([ok], [Slot()])


def test_concept_from_tensors_with_a_mask_for_some_pictures_only():
    images = torch.zeros(2, 64, 72, 3)
    mask = torch.zeros(64, 72)
    mask[10:30, 20:40] = 1.0
    c = concept_from_tensors("eve", "<eve>", "woman", images, [None, mask])
    assert c.masks[0] is None and c.masks[1].sum() == 400
    with pytest.raises(ClifError, match=r"masks\[1\] is 40x32 but images\[1\] is 72x64"):
        concept_from_tensors("eve", "<eve>", "woman", images, [None, torch.ones(32, 40)])
    with pytest.raises(ClifError, match=r"1 mask\(s\) for 2 image\(s\)"):
        concept_from_tensors("eve", "<eve>", "woman", images, [mask])
    with pytest.raises(ClifError, match=r"each mask must be shaped \[H, W\]; got \(1, 64, 72\)"):
        concept_from_tensors("eve", "<eve>", "woman", images, [None, mask[None]])
