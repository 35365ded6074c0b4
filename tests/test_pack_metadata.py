"""pyproject.toml's [tool.comfy] registry metadata names real things: the icon is a file of this repository
(a square PNG the registry can show), and requires-comfyui admits every ComfyUI version the tests run."""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from PIL import Image

from tests.comfyui.rig import CARRIERS

REPO = Path(__file__).resolve().parents[1]
COMFY = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["comfy"]
REPOSITORY = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]["Repository"]


def test_icon_is_a_square_png_of_this_repository():
    raw_prefix = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert COMFY["Icon"].startswith(raw_prefix), f"Icon {COMFY['Icon']} is not a file of {REPOSITORY}"
    icon = REPO / COMFY["Icon"][len(raw_prefix):]
    assert icon.is_file(), f"{icon.relative_to(REPO)} does not exist (scripts/make_icon.py draws it)"
    with Image.open(icon) as im:
        assert im.format == "PNG" and im.width == im.height >= 64, (im.format, im.size)


def test_requires_comfyui_admits_every_tested_version():
    declared = SpecifierSet(COMFY["requires-comfyui"])
    assert all(version in declared for version in CARRIERS), (declared, sorted(CARRIERS))
    oldest = min(CARRIERS, key=Version)
    assert str(declared) == f">={oldest}", f"the floor is the oldest tested ComfyUI, {oldest}"
