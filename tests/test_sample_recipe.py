"""Recipes in PNG files and on the command line: round trips, fingerprints, and `clif sample`."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from clif_core.cli import main
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.errors import ClifError
from clif_core.models.loader import load_base_model
from clif_core.models.tiny import TINY_IMAGE_SIZE
from clif_core.sample.cli import parse_concept_arg
from clif_core.sample.config import SampleConfig
from clif_core.sample.recipe import (
    a1111_parameters,
    concept_file_fingerprint,
    image_recipe,
    read_png_recipe,
    save_png,
)
from clif_core.sample.sampler import ConceptUse, sample
from tests.helpers.concept_files import make_concept_file


def test_png_recipe_round_trip_keeps_pixels_and_every_field(sd1, tmp_path):
    cf = make_concept_file(sd1, seed=4, text_lora=False)
    result = sample(sd1, SampleConfig("a photo of <alice>", negative_prompt="blurry", seed=7, steps=2, batch=2,
                                      scheduler="dpmpp_2m_karras"), [ConceptUse(cf, 0.8, "alice.safetensors")])
    recipe = result.image_recipe(1)
    path = save_png(result.images[1], tmp_path / "out.png", recipe, extra_text={"prompt": '{"1": {}}'})
    assert read_png_recipe(path) == recipe
    assert json.loads(result.recipe_json()) == result.recipe
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(result.images[1]))
        assert im.text["prompt"] == '{"1": {}}'
        parameters = im.text["parameters"]
    assert parameters.splitlines()[0] == "a photo of <alice>"
    assert "Negative prompt: blurry" in parameters
    assert "Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 8, Size: 64x64" in parameters
    assert "@ 0.8" in parameters and recipe["concepts"][0]["fingerprint"] in parameters
    expected = {"prompt", "negative_prompt", "seed", "batch", "steps", "cfg", "scheduler", "width", "height",
                "base", "concepts", "regions", "format"}
    assert set(recipe) == expected
    assert recipe["base"]["fingerprint"] == sd1.fingerprint and recipe["base"]["family"] == "sd1"
    assert (recipe["seed"], recipe["batch"]) == (8, 1)
    # The recipe reproduces the image.
    again = sample(sd1, SampleConfig(recipe["prompt"], negative_prompt=recipe["negative_prompt"], seed=recipe["seed"],
                                     steps=recipe["steps"], scheduler=recipe["scheduler"]), [(cf, 0.8)])
    assert np.abs(np.asarray(again.images[0], np.int16) - np.asarray(result.images[1], np.int16)).max() <= 1


def test_reading_a_png_without_a_recipe_is_a_clear_error(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(ClifError, match="plain.png carries no CLIF recipe"):
        read_png_recipe(tmp_path / "plain.png")
    (tmp_path / "not.png").write_bytes(b"nope")
    with pytest.raises(ClifError, match="cannot be read as an image"):
        read_png_recipe(tmp_path / "not.png")


def test_image_recipe_bounds():
    recipe = {"seed": 5, "batch": 2, "prompt": "x"}
    assert image_recipe(recipe, 1) == {"seed": 6, "batch": 1, "prompt": "x"}
    with pytest.raises(ClifError, match="outside the recipe's batch of 2"):
        image_recipe(recipe, 2)
    assert a1111_parameters({"prompt": "x", "steps": 3, "scheduler": "euler_a", "cfg": 5, "seed": 1,
                             "width": 8, "height": 8}).endswith("Sampler: Euler a, CFG scale: 5, Seed: 1, Size: 8x8")


def test_concept_file_fingerprint_follows_content_not_the_file(sd1, tmp_path):
    cf = make_concept_file(sd1, seed=4)
    saved = load_concept_file(save_concept_file(cf, tmp_path / "a.safetensors"))
    renamed = dataclasses.replace(saved, title="another title")
    assert concept_file_fingerprint(cf) == concept_file_fingerprint(saved) == concept_file_fingerprint(renamed)
    changed = dataclasses.replace(cf, unet_lora={**cf.unet_lora})
    key = next(iter(changed.unet_lora))
    changed.unet_lora[key] = changed.unet_lora[key].clone()
    changed.unet_lora[key].view(-1)[0] += 1e-3
    assert concept_file_fingerprint(changed) != concept_file_fingerprint(cf)


def test_parse_concept_arg():
    assert parse_concept_arg("a.safetensors:0.5")[1] == 0.5
    assert parse_concept_arg("a.safetensors") == (parse_concept_arg("a.safetensors")[0], 1.0)
    assert str(parse_concept_arg(r"C:\models\a.safetensors")[0]) == r"C:\models\a.safetensors"


def test_clif_sample_writes_pngs_with_their_recipes(tiny_sd1, tmp_path, capsys):
    base = load_base_model(tiny_sd1.diffusers_dir, device="cpu")
    concepts = save_concept_file(make_concept_file(base, seed=4), tmp_path / "alice_bob.safetensors")
    out = tmp_path / "renders"
    args = ["sample", "--base", str(tiny_sd1.single_file), "--prompt", "<alice> and <bob> in a park",
            "--concepts", f"{concepts}:0.6", "--seed", "3", "--steps", "2", "--batch", "2", "--out", str(out),
            "--region", "<alice>", "--region", "<bob>", "--boxes", "0,0,0.5,1; 0.5,0,1,1", "--device", "cpu"]
    assert main(args) == 0
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["clif-3.png", "clif-4.png"]
    recipe = read_png_recipe(written[1])
    assert recipe["seed"] == 4 and recipe["batch"] == 1 and recipe["steps"] == 2
    [entry] = recipe["concepts"]
    assert entry["path"] == str(concepts) and entry["strength"] == 0.6
    assert entry["fingerprint"] == concept_file_fingerprint(load_concept_file(concepts))
    assert [r["box"] for r in recipe["regions"]] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
    assert Image.open(written[0]).size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)

    # Existing files are not replaced without --overwrite; an unknown placeholder names itself.
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(["sample", "--base", str(tiny_sd1.single_file), "--prompt", "<carol>", "--steps", "1",
                 "--out", str(out), "--name", "carol", "--device", "cpu"]) == 2
    assert "<carol>" in capsys.readouterr().err and not list(out.glob("carol*"))
    both = ["sample", "--base", str(tiny_sd1.single_file), "--prompt", "x", "--out", str(out), "--region", "x",
            "--region-mask", str(written[0]), "--boxes", "0,0,1,1"]
    assert main(both) == 2
    assert "either --boxes or --region-mask" in capsys.readouterr().err
