"""Segmentation backends: the fallback on synthetic pictures with known masks, user masks winning,
part naming, and the real segment-anything code path with a tiny randomly initialised SAM."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clif_core.augment.fallback import FallbackSegmenter
from clif_core.augment.parts import describe_parts
from clif_core.augment.sam import (
    SamOptions,
    SamSegmenter,
    detect_sam_variant,
    load_sam,
    read_sam_state_dict,
)
from clif_core.augment.segment import UserMaskSegmenter, segment_concept
from clif_core.concepts.spec import Concept
from clif_core.errors import ClifError

HEAD = (60, 20, 140, 90)
BODY = (50, 90, 150, 230)


def _background(kind: str, size: int) -> np.ndarray:
    if kind == "gradient":
        ramp = np.linspace(0, 1, size)[:, None, None]
        return (np.array([210, 225, 245]) * (1 - ramp) + np.array([170, 190, 215]) * ramp) * np.ones((size, size, 3))
    colour = {"light": (235, 235, 230), "dark": (25, 30, 35), "white": (255, 255, 255)}[kind]
    return np.ones((size, size, 3)) * np.array(colour)


def _scene(kind: str, noise: float = 0.0, size: int = 256, seed: int = 0):
    """A two-part figure (round head, square body) and its exact masks."""
    bg = Image.fromarray(np.clip(_background(kind, size), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(bg)
    d.ellipse(HEAD, fill=(220, 60, 60))
    d.rectangle(BODY, fill=(40, 90, 200))
    head = Image.new("L", (size, size), 0)
    ImageDraw.Draw(head).ellipse(HEAD, fill=255)
    body = Image.new("L", (size, size), 0)
    ImageDraw.Draw(body).rectangle(BODY, fill=255)
    head_m = np.asarray(head) > 127
    body_m = (np.asarray(body) > 127) & ~head_m
    if noise:
        arr = np.asarray(bg).astype(np.float64) + np.random.default_rng(seed).normal(0, noise, (size, size, 3))
        bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return bg, head_m | body_m, head_m, body_m


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("kind,noise", [("light", 0), ("dark", 0), ("white", 0), ("gradient", 0), ("light", 12), ("gradient", 8)])
def test_fallback_finds_the_subject_and_its_parts(kind, noise):
    image, whole, head, body = _scene(kind, noise)
    seg = FallbackSegmenter().segment(image, n_parts=2)
    assert seg.mask.shape == whole.shape and seg.mask.dtype == bool
    assert _iou(seg.mask, whole) >= 0.9
    assert len(seg.parts) == 2
    by_head = max(seg.parts, key=lambda p: _iou(p, head))
    by_body = max(seg.parts, key=lambda p: _iou(p, body))
    assert _iou(by_head, head) >= 0.9 and _iou(by_body, body) >= 0.9


def test_fallback_keeps_one_colour_regions_whole_even_when_more_parts_are_asked_for():
    image, _, head, body = _scene("light")
    seg = FallbackSegmenter().segment(image, n_parts=6)
    assert len(seg.parts) == 2, "a single-colour body must not be cut into pieces"
    by_head = max(seg.parts, key=lambda p: _iou(p, head))
    by_body = max(seg.parts, key=lambda p: _iou(p, body))
    assert _iou(by_head, head) >= 0.98 and _iou(by_body, body) >= 0.98


def test_fallback_prompt_box_limits_the_search():
    image, whole, _, _ = _scene("light")
    d = ImageDraw.Draw(image)
    d.rectangle((200, 200, 240, 240), fill=(0, 200, 0))  # a second object outside the box
    seg = FallbackSegmenter().segment(image, prompt_box=(40, 10, 160, 240), n_parts=0)
    assert _iou(seg.mask, whole) >= 0.9 and not seg.mask[200:240, 200:240].any()
    with pytest.raises(ClifError, match=r"prompt box .* does not overlap"):
        FallbackSegmenter().segment(image, prompt_box=(300, 300, 400, 400))
    # a point on the subject keeps its component and drops the other object
    pointed = FallbackSegmenter().segment(image, prompt_points=[(100, 150)], n_parts=0)
    assert _iou(pointed.mask, whole) >= 0.9 and not pointed.mask[200:240, 200:240].any()
    other = FallbackSegmenter().segment(image, prompt_points=[(220, 220)], n_parts=0)
    assert other.mask[205:235, 205:235].all() and not (other.mask & whole).any()
    with pytest.raises(ClifError, match=r"only backdrop under the prompt point\(s\)"):
        FallbackSegmenter().segment(image, prompt_points=[(5, 5)])
    with pytest.raises(ClifError, match=r"prompt point\(s\) \[\(220, 220\)\] must lie inside the prompt box"):
        FallbackSegmenter().segment(image, prompt_box=(40, 10, 160, 240), prompt_points=[(220, 220)])
    with pytest.raises(ClifError, match=r"prompt point\(s\) \[\(999, 5\)\] lie outside the 256x256 image"):
        FallbackSegmenter().segment(image, prompt_points=[(999, 5)])


def test_fallback_failure_names_the_picture():
    flat = Image.new("RGB", (128, 128), (120, 130, 140))
    c = Concept("ann", "<ann>", "woman", [flat], sources=["photos/ann/flat.png"])
    with pytest.raises(ClifError, match=r"concept 'ann': photos/ann/flat\.png shows no subject .* Give a mask"):
        segment_concept(c, FallbackSegmenter())


def test_user_masks_always_win():
    image, whole, head, body = _scene("light")
    user = np.zeros_like(whole)
    user[100:200, 60:140] = True  # deliberately not what the picture shows
    c = Concept("ann", "<ann>", "woman", [image, image], masks=[user, None], parts=["head", "body"])
    segs = segment_concept(c, FallbackSegmenter())
    assert np.array_equal(segs[0].mask, user)
    assert all((p & ~user).sum() == 0 for p in segs[0].parts)
    assert _iou(segs[1].mask, whole) >= 0.9
    # user part masks win over automatic parts, named from their files/list
    c2 = Concept("ann", "<ann>", "woman", [image], masks=[whole], parts=["head", "body"], part_masks=[{"body": body, "head": head}])
    seg = segment_concept(c2, FallbackSegmenter())[0]
    assert seg.part_names == ["head", "body"] and np.array_equal(seg.parts[0], head) and np.array_equal(seg.parts[1], body)
    hat = np.zeros_like(whole)
    hat[2:20, 80:120] = True  # above the head, where the backend sees backdrop
    c_hat = Concept("ann", "<ann>", "woman", [image], part_masks=[{"hat": hat, "head": head}])
    seg = segment_concept(c_hat, FallbackSegmenter())[0]
    assert np.array_equal(seg.parts[0], hat) and np.array_equal(seg.mask, seg.mask | hat)
    assert _iou(seg.mask, whole | hat) >= 0.9
    outside = np.zeros_like(whole)
    outside[0:5, 0:5] = True
    c3 = Concept("ann", "<ann>", "woman", [image], masks=[whole], part_masks=[{"hat": outside}], sources=["a.png"])
    with pytest.raises(ClifError, match=r"part mask\(s\) \['hat'\] of a\.png lie outside"):
        segment_concept(c3, FallbackSegmenter())


def test_parts_are_named_top_to_bottom_from_the_users_list_else_described():
    image, _, head, body = _scene("light")
    named = segment_concept(Concept("a", "<a>", "man", [image], parts=["hair", "coat"]), FallbackSegmenter())[0]
    assert named.part_names == ["hair", "coat"]
    assert _iou(named.parts[0], head) >= 0.9 and _iou(named.parts[1], body) >= 0.9
    generic = segment_concept(Concept("a", "<a>", "man", [image]), FallbackSegmenter(), n_parts=2)[0]
    assert generic.part_names == ["upper part", "lower part"]
    whole = np.ones((90, 90), bool)
    cells = [np.zeros((90, 90), bool) for _ in range(4)]
    cells[0][:30, :30] = True  # two side by side at the top
    cells[1][:30, 60:] = True
    cells[2][60:, 30:60] = True  # one at the bottom
    cells[3][35:50, 30:60] = True  # one in between
    assert describe_parts(cells, whole) == ["upper left part", "upper right part", "lower part", "middle part"]
    assert describe_parts(cells[:2], whole) == ["left part", "right part"]
    strip = [np.zeros((90, 90), bool) for _ in range(4)]
    for i, m in enumerate(strip):
        m[40:50, i * 20 : i * 20 + 10] = True
    assert describe_parts(strip, whole) == ["left part", "center part 1", "center part 2", "right part"]


def test_mask_only_backend():
    image, whole, _, _ = _scene("light")
    c = Concept("ann", "<ann>", "woman", [image, image], masks=[whole, None], sources=["a.png", "b.png"])
    with pytest.raises(ClifError, match=r"concept 'ann': b\.png has no mask, and the 'masks' segmenter"):
        segment_concept(c, UserMaskSegmenter())
    seg = UserMaskSegmenter().segment(image, mask=whole)
    assert np.array_equal(seg.mask, whole) and seg.parts == []


# ------------------------------------------------------------------------------------ segment-anything


def _tiny_sam(img_size: int = 64, dim: int = 32):
    """segment-anything's own modules at toy size: a 2-block ViT on 64 px inputs, random weights."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, out_chans=dim,
            qkv_bias=True, use_rel_pos=True, window_size=2, global_attn_indexes=(1,),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


# Random weights give low quality scores; open the filters so the generator's output path is exercised.
OPEN = SamOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_tiny_sam_segments_through_predictor_and_automatic_generator():
    image, whole, _, _ = _scene("light", size=128)
    sam = SamSegmenter(_tiny_sam(), "tiny", OPEN)
    records = sam.generator.generate(np.asarray(image))
    assert records, "the automatic mask generator returned nothing"
    assert all(r["segmentation"].shape == (128, 128) and r["segmentation"].dtype == bool for r in records)

    seg = sam.segment(image, n_parts=3)
    assert seg.mask.shape == (128, 128) and seg.mask.dtype == bool and seg.mask.any()
    assert 1 <= len(seg.parts) <= 3
    union = np.zeros_like(seg.mask)
    for p in seg.parts:
        assert p.shape == (128, 128) and not (p & ~seg.mask).any() and not (p & union).any()
        union |= p
    assert np.array_equal(union, seg.mask), "parts must tile the concept mask"

    boxed = sam.segment(image, prompt_box=(20, 5, 80, 120), n_parts=0)
    assert boxed.mask.shape == (128, 128) and boxed.parts == []
    pointed = sam.segment(image, prompt_points=[(50, 60), (50, 20)], n_parts=0)
    assert pointed.mask.shape == (128, 128) and pointed.mask.dtype == bool
    user = sam.segment(image, mask=whole, n_parts=2)
    assert np.array_equal(user.mask, whole) and all(not (p & ~whole).any() for p in user.parts)
    assert sam.describe() == "sam(tiny)"


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """The real vit_b structure with random weights, saved as the official .pth would be (never run)."""
    from segment_anything import sam_model_registry

    path = tmp_path_factory.mktemp("sams") / "random_vit_b.pth"
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def test_variant_is_detected_from_the_weights_and_loaded_strictly(vit_b_checkpoint, tmp_path):
    state = read_sam_state_dict(vit_b_checkpoint)
    assert detect_sam_variant(state) == "vit_b"
    renamed = tmp_path / "whatever_name.pth"  # the name carries no information
    renamed.symlink_to(vit_b_checkpoint)
    model, variant = load_sam(renamed, device="cpu")
    assert variant == "vit_b"
    loaded = model.state_dict()["image_encoder.patch_embed.proj.weight"]
    assert torch.equal(loaded, state["image_encoder.patch_embed.proj.weight"])

    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": state}, wrapped)
    assert detect_sam_variant(read_sam_state_dict(wrapped)) == "vit_b"
    bad = dict(state)
    bad["mask_decoder.extra_token.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "hq.pth")
    with pytest.raises(ClifError, match=r"hq\.pth looks like vit_b but does not fit it: 0 missing tensors .* 1 unexpected"):
        load_sam(tmp_path / "hq.pth", device="cpu")


class _NotATensor:
    pass


def test_unknown_or_unsafe_checkpoints_are_refused(tmp_path):
    tiny = tmp_path / "tiny.pth"
    torch.save(_tiny_sam().state_dict(), tiny)
    with pytest.raises(ClifError, match=r"tiny\.pth has a SAM image encoder of width 32 and 2 blocks, which matches no known"):
        load_sam(tiny)
    other = tmp_path / "unet.pth"
    torch.save({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, other)
    with pytest.raises(ClifError, match=r"unet\.pth is not a segment-anything checkpoint .*keys start with conv_in\.weight"):
        load_sam(other)
    pickled = tmp_path / "pickled.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": _NotATensor()}, pickled)
    with pytest.raises(ClifError, match=r"pickled\.pth cannot be read as tensors .*pickled objects, which are never loaded"):
        load_sam(pickled)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(tiny.read_bytes()[:2000])
    with pytest.raises(ClifError, match=r"cut\.pth cannot be read as tensors"):
        load_sam(truncated)
    with pytest.raises(ClifError, match=r"missing\.pth does not exist"):
        load_sam(tmp_path / "missing.pth")


def test_with_segmentation_carries_masks_and_parts_that_augment_then_uses_as_they_are():
    from clif_core.augment.preview import PART_COLOURS, concept_sheet, segmentation_sheet
    from clif_core.augment.segment import segment_concept_image, with_segmentation

    scenes = [_scene("light"), _scene("dark")]
    concept = Concept("eve", "<eve>", "woman", [s[0] for s in scenes], parts=["hair", "dress", "shoes"])
    segs = segment_concept(concept, FallbackSegmenter(), n_parts=4)
    assert segs[0].part_names == ["upper part", "lower part"], "2 regions for 3 names: generic names"
    done = with_segmentation(concept, segs)
    assert concept.masks == [None, None] and concept.part_masks == [{}, {}], "the input concept is unchanged"
    assert done.parts == ["upper part", "lower part"]
    for i, seg in enumerate(segs):
        assert np.array_equal(done.masks[i], seg.mask)
        again = segment_concept_image(done, i, UserMaskSegmenter())  # no segmenter work is left to do
        assert again.part_names == seg.part_names
        assert all(np.array_equal(a, b) for a, b in zip(again.parts, seg.parts))
    with pytest.raises(ClifError, match=r"1 segmentation\(s\) for 2 picture\(s\)"):
        with_segmentation(concept, segs[:1])

    sheet = np.asarray(segmentation_sheet(concept, segs, cell=128))
    assert sheet.shape[1] == 3 * 128 and sheet.shape[0] > 2 * 128
    for colour in PART_COLOURS[:2]:  # each part is painted in its colour
        assert (np.abs(sheet.astype(int) - colour).sum(axis=-1) == 0).sum() > 500
    faded = np.asarray(concept_sheet(done, cell=128))
    plain = np.asarray(concept_sheet(concept, cell=128))
    assert faded.shape == plain.shape and faded.mean() > plain.mean() + 5, "outside the mask is faded toward white"
