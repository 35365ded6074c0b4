"""The sandbox world: deterministic renders whose captions, pixels and masks agree; the character spec."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clif_core.errors import ClifError
from clif_core.sandbox.attributes import BACKGROUNDS, COLOURS, DETAILS, IMAGE_SIZE
from clif_core.sandbox.characters import (
    SHIPPED_SPEC,
    character_concept,
    load_characters,
    render_character_images,
    write_character_folder,
)
from clif_core.sandbox.render import PATTERN_SHADE, render_scene
from clif_core.sandbox.scene import Background, Figure, Part, Placed, Placement, Scene, Shape, caption
from clif_core.sandbox.world import WorldConfig, render, slot_box

SEEDS = range(120)


def _erode(mask: np.ndarray, r: int = 1) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_same_seed_same_bytes_in_a_fresh_process():
    here = [render(s) for s in (3, 11)]
    code = (
        "import sys, hashlib; from clif_core.sandbox.world import render; "
        "rs=[render(s) for s in (3, 11)]; "
        "sys.stdout.write(hashlib.sha256(b''.join(r.image.tobytes()+r.masks.tobytes() for r in rs)).hexdigest()"
        "+'|'+'|'.join(r.caption for r in rs))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import hashlib

    digest = hashlib.sha256(b"".join(r.image.tobytes() + r.masks.tobytes() for r in here)).hexdigest()
    assert out == digest + "|" + "|".join(r.caption for r in here)
    assert render(3).caption != render(4).caption or not np.array_equal(render(3).image, render(4).image)


def test_caption_names_what_is_drawn():
    scene = Scene(
        Background("white"),
        (
            Placed(Shape("circle", "red", "striped"), Placement("left", 16, 32, 24)),
            Placed(
                Figure(Part("round", "green"), Part("boxy", "blue", "dotted"), None),
                Placement("right", 48, 32, 40),
            ),
        ),
    )
    assert caption(scene) == (
        "a red striped circle on the left and a figure with a green round head and a blue dotted boxy body "
        "on the right, white background"
    )
    assert caption(scene, background=False).endswith("on the right")
    one = Scene(Background("cream", "pale blue", "vertical"), (Placed(Shape("star", "orange"), Placement("center", 32, 32, 30)),))
    assert caption(one) == "an orange star, cream and pale blue gradient background"


def test_every_render_has_consistent_caption_pixels_and_masks():
    kinds_seen, textures_seen = set(), set()
    for seed in SEEDS:
        r = render(seed)
        scene = r.scene
        assert r.image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and r.image.dtype == np.uint8
        assert r.masks.shape == (len(scene.objects), IMAGE_SIZE, IMAGE_SIZE)
        assert len(scene.objects) in (1, 2)
        slots = [o.placement.slot for o in scene.objects]
        assert slots == (["center"] if len(slots) == 1 else ["left", "right"])
        text = r.caption
        if len(slots) == 2:
            assert " on the left and " in text and " on the right, " in text
        union = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for obj, mask, parts in zip(scene.objects, r.masks, r.part_masks):
            thing, place = obj.thing, obj.placement
            kinds_seen.add(thing.kind)
            assert mask.sum() > 40, f"seed {seed}: object too small to see"
            assert not (mask & union).any(), f"seed {seed}: objects overlap"
            union |= mask
            x0, _, x1, _ = slot_box(place.slot)
            cols = np.nonzero(mask.any(axis=0))[0]
            assert cols.min() >= int(x0) - 1 and cols.max() <= int(np.ceil(x1)), f"seed {seed}: object leaves its slot"
            if thing.kind == "shape":
                textures_seen.add(thing.texture)
                assert f"{thing.colour} {thing.texture + ' ' if thing.texture != 'plain' else ''}{thing.shape}" in text
                assert parts == {}
                # inside the object the pixels are its colour or (textures) its darker pattern shade
                inner = r.image[_erode(mask)].astype(np.int32)
                colour = np.array(COLOURS[thing.colour])
                exact = np.all(inner == colour, axis=1)
                if thing.texture == "plain":
                    assert exact.mean() > 0.99, f"seed {seed}: plain shape not its colour"
                else:  # anti-aliased pattern: every pixel lies between the colour and its dark shade
                    dark = colour * PATTERN_SHADE
                    a = ((colour - inner) @ (colour - dark)) / ((colour - dark) @ (colour - dark))
                    off_line = np.abs(inner - (colour + np.outer(a, dark - colour))).max(axis=1)
                    assert np.quantile(off_line, 0.98) <= 1.5 and a.min() < 0.3 and a.max() > 0.7, f"seed {seed}: texture not drawn"
            else:
                assert f"{thing.head.colour} " in text and f"{thing.head.shape} head" in text
                assert f"{thing.body.shape} body" in text
                assert set(parts) >= {"head", "body"}
                for part_mask in parts.values():
                    assert not (part_mask & ~mask).any()
                head_pixels = r.image[_erode(parts["head"])].astype(np.int32)
                if thing.head.texture == "plain" and thing.detail is None:
                    assert np.all(head_pixels == np.array(COLOURS[thing.head.colour]), axis=1).mean() > 0.95
                if thing.accessory is not None:
                    assert f"{thing.accessory.colour} {thing.accessory.shape}" in text
                    assert "accessory" in parts
                if thing.detail is not None:
                    assert thing.detail.kind not in text
        bg = scene.background
        if bg.colour2 is None:
            far = _erode(~union, 1)  # one pixel away from every object: no anti-aliased edge
            plain = np.all(r.image[far] == np.array(BACKGROUNDS[bg.colour]), axis=1)
            assert plain.mean() > 0.995, f"seed {seed}: background not plain"  # thin tips may blend a pixel
    assert kinds_seen == {"shape", "figure"}
    assert textures_seen == {"plain", "striped", "dotted", "checkered"}


def test_a_scene_renders_identically_from_its_description():
    r = render(5)
    again = render_scene(r.scene)
    assert np.array_equal(r.image, again.image) and np.array_equal(r.masks, again.masks)


def test_world_config_restricts_what_is_drawn():
    cfg = WorldConfig(p_two=0.0, p_figure=0.0, shapes=("star",), colours=("blue",), textures=("plain",))
    for seed in range(10):
        scene = render(seed, cfg).scene
        assert [(o.thing.shape, o.thing.colour) for o in scene.objects] == [("star", "blue")]


# ----------------------------------------------------------------------------------------------- characters


def test_shipped_characters_have_confusable_pairs():
    spec = load_characters()
    assert len(spec.pairs) >= 4
    for a, b in spec.pairs:
        ca, cb = spec[a], spec[b]
        assert ca.body_plan() == cb.body_plan(), f"{a}/{b} do not share a body plan"
        assert ca.figure != cb.figure
        for word in DETAILS:
            assert word not in ca.description
    assert spec.match(spec["ada"].figure) == "ada"


def test_character_renders_vary_but_keep_identity(tmp_path):
    spec = load_characters()
    ada = spec["ada"]
    renders = render_character_images(ada, 5, seed=1)
    assert len(renders) == 5
    assert all(r.scene.objects[0].thing == ada.figure for r in renders)
    placements = {r.scene.objects[0].placement for r in renders}
    assert len({p.pose for p in placements}) > 1 and len({round(p.size) for p in placements}) > 1
    assert len({r.scene.background for r in renders}) > 1
    assert np.array_equal(render_character_images(ada, 5, seed=1)[3].image, renders[3].image)
    assert not np.array_equal(render_character_images(spec["ida"], 5, seed=1)[3].image, renders[3].image)

    concept = character_concept(ada, "<ada>", n=3, seed=2)
    assert concept.class_word == "figure" and concept.parts == ["head", "body", "accessory"]
    assert all(m.any() for m in concept.masks)

    from clif_core.concepts.spec import load_concept_folder

    folder = write_character_folder(ada, tmp_path / "ada", n=3, seed=2)
    loaded = load_concept_folder(folder, "<ada>", "figure", parts=["head", "body", "accessory"])
    assert len(loaded.images) == 3
    for a, b in zip(loaded.masks, concept.masks):
        assert np.array_equal(a, b)
    assert set(loaded.part_masks[0]) == {"head", "body", "accessory"}


def _spec(**changes):
    data = json.loads(SHIPPED_SPEC.read_text())
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"characters__ada__head__colour": "teal"}, "characters.ada.head.colour: 'teal' is not one of red, orange"),
        ({"characters__ada__body": None}, "characters.ada.body: is missing"),
        ({"characters__ada__accessory__kind": "cape"}, "characters.ada.accessory.kind: 'cape' is not one of hat"),
        ({"characters__ada__detail__kind": "tattoo"}, "characters.ada.detail.kind: 'tattoo' is not one of badge"),
        ({"characters__ada__hair": {"colour": "red"}}, "characters.ada: unknown key(s) 'hair'"),
        ({"pairs": [["ada", "zed"]]}, "pairs[0]: 'zed' is not a character defined in this file"),
        ({"pairs": [["ada", "ada"]]}, "pairs[0]: pairs 'ada' with itself"),
        ({"version": 2}, "version: is 2; this version of the pack reads version 1"),
        ({"characters__ida": json.loads(SHIPPED_SPEC.read_text())["characters"]["ada"]}, "characters.ida: is identical to 'ada'"),
    ],
)
def test_bad_character_spec_is_refused_with_the_field(tmp_path, changes, expected):
    path = tmp_path / "chars.json"
    path.write_text(json.dumps(_spec(**changes)))
    with pytest.raises(ClifError) as err:
        load_characters(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_unreadable_character_spec(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "clif-sandbox-characters", "version": 1, "characters": {')
    with pytest.raises(ClifError, match="not valid JSON"):
        load_characters(bad)
    dup = tmp_path / "dup.json"
    dup.write_text('{"format": "clif-sandbox-characters", "format": "x"}')
    with pytest.raises(ClifError, match="appears twice"):
        load_characters(dup)
    with pytest.raises(ClifError, match="cannot read"):
        load_characters(tmp_path / "missing.json")


def test_new_characters_need_no_code(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({
        "format": "clif-sandbox-characters", "version": 1,
        "characters": {
            "zed": {"head": {"shape": "pointy", "colour": "red", "texture": "checkered"},
                    "body": {"shape": "round", "colour": "cyan"}, "detail": {"kind": "eyes", "colour": "white"}},
            "zoe": {"head": {"shape": "pointy", "colour": "red", "texture": "checkered"},
                    "body": {"shape": "round", "colour": "pink"}, "class_word": "robot"},
        },
        "pairs": [["zed", "zoe"]],
    }))
    spec = load_characters(path)
    assert spec.pairs == (("zed", "zoe"),) and spec["zoe"].class_word == "robot"
    r = render_character_images(spec["zed"], 1)[0]
    assert r.caption.startswith("a figure with a red checkered pointy head and a cyan round body")


def test_cli_render_and_characters(tmp_path, capsys):
    from clif_core.cli import main

    assert main(["sandbox", "render", "--out", str(tmp_path / "r"), "--n", "3", "--seed", "5", "--grid"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "r" / "captions.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in lines] == [render(s).caption for s in (5, 6, 7)]
    assert all((tmp_path / "r" / o["mask"]).is_file() for x in lines for o in x["objects"])
    assert (tmp_path / "r" / "grid.png").is_file()

    assert main(["sandbox", "characters", "--out", str(tmp_path / "c"), "--names", "dot,dex", "--n", "2"]) == 0
    assert "dot/dex" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "c" / "dex").iterdir()) == ["000.png", "001.png", "masks"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["sandbox", "characters", "--spec", str(bad)]) == 2
    assert "format" in capsys.readouterr().err
