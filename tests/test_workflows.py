"""Every shipped workflow (workflows/*.json) converts against the live /object_info and runs in the real server.

A JSON dropped into workflows/ is picked up without editing this file. Each is converted with comfy-cli's
converter (the same one `comfy run --workflow` uses), its step counts are lowered through the API prompt, and
its saved outputs are checked on disk: every output node wrote its images, the images are real PNGs of a
sensible size, and a Save Concept File node wrote a concept file the core loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.workflow_tools import (
    SHIPPED_CONCEPT_FILES,
    WORKFLOWS_DIR,
    ensure_concept_files,
    lower_steps,
    prepare_server,
)

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
TIMINGS: dict[str, float] = {}


def _nodes_by_type(ui: dict, type_: str) -> list[dict]:
    return [n for n in ui["nodes"] if n["type"] == type_]


@pytest.fixture(scope="module")
def prepared(comfy_server, tmp_path_factory):
    return prepare_server(comfy_server, tmp_path_factory.mktemp("workflow-models"))


def test_workflows_are_shipped():
    assert len(WORKFLOWS) >= 2, "workflows/ holds the shipped workflows"
    for path in WORKFLOWS:
        assert path.with_suffix(".jpg").is_file(), f"{path.name} has no same-name .jpg thumbnail"


@pytest.mark.every_comfyui
def test_template_browser_serves_every_workflow_and_thumbnail(comfy_server):
    """What ComfyUI's template browser fetches: the pack's list, then each file. ComfyUI serves the first of a
    pack's example_workflows/, example/, examples/, workflow/, workflows/ folders that exists under one URL, so
    another of those folders in the pack would hide workflows/."""
    import urllib.request

    from tests.comfyui.rig import PACK_LINK_NAME

    listed = comfy_server._request("GET", "/api/workflow_templates")
    assert sorted(listed.get(PACK_LINK_NAME, [])) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        for file in (path, path.with_suffix(".jpg")):
            url = f"{comfy_server.url}/api/workflow_templates/{PACK_LINK_NAME}/{file.name}"
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.read() == file.read_bytes(), f"{url} is not {file.name}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_readable_for_newcomers(path: Path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    assert ui["version"] == 0.4 and ui["nodes"] and ui["groups"]
    for node in ui["nodes"]:
        assert node.get("title"), f"{path.name}: node {node['id']} ({node['type']}) has no title"
        x, y = node["pos"]
        inside = [g for g in ui["groups"] if g["bounding"][0] <= x <= g["bounding"][0] + g["bounding"][2]
                  and g["bounding"][1] <= y <= g["bounding"][1] + g["bounding"][3]]
        assert inside, f"{path.name}: node {node['title']!r} is in no group"
    for group in ui["groups"]:  # the editor draws a group's title at 24 px, about 10 px a character
        assert len(group["title"]) * 10 <= group["bounding"][2], \
            f"{path.name}: group title {group['title']!r} runs past its group into the next one; shorten it"
    ids = {n["id"] for n in ui["nodes"]}
    for link in ui["links"]:
        assert link[1] in ids and link[3] in ids, f"{path.name}: link {link} joins unknown nodes"


@pytest.mark.every_comfyui
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs(comfy_server, prepared, path: Path):
    from comfy_cli.workflow_to_api import convert_ui_to_api
    from PIL import Image

    from clif_core.sample.recipe import PNG_KEY

    began = time.monotonic()
    ui = json.loads(path.read_text(encoding="utf-8"))
    files = [v for n in _nodes_by_type(ui, "CLIFLoadConceptFile") for v in n["widgets_values"]
             if v in SHIPPED_CONCEPT_FILES]
    if files:  # written by the training workflow when that ran first, else synthetic stand-ins
        base = next(n for n in ui["nodes"] if n["type"] == "CLIFLoadBaseModel")["widgets_values"][0]
        ensure_concept_files(comfy_server, base, files=files)
    info = comfy_server.object_info()
    missing = sorted({n["type"] for n in ui["nodes"]} - set(info))
    assert not missing, f"{path.name} needs nodes this ComfyUI does not have: {missing}"
    prompt = convert_ui_to_api(ui, info)
    assert set(prompt) == {str(n["id"]) for n in ui["nodes"] if n.get("mode", 0) == 0}
    lowered = lower_steps(prompt)
    assert lowered or not any("steps" in name for n in prompt.values() for name in n["inputs"])

    entry = comfy_server.run(prompt, timeout=600)

    outputs = entry["outputs"]
    for node in ui["nodes"]:
        if node["type"] in ("SaveImage", "CLIFSaveImage"):
            saved = [comfy_server.output_dir / i.get("subfolder", "") / i["filename"]
                     for i in outputs.get(str(node["id"]), {}).get("images", [])]
            assert saved, f"{path.name}: {node['title']!r} saved no image"
            for file in saved:
                assert file.is_file(), f"{file} missing"
                with Image.open(file) as im:
                    assert im.format == "PNG" and min(im.size) >= 16, f"{file}: {im.format} {im.size}"
                    if node["type"] == "CLIFSaveImage":
                        assert PNG_KEY in im.info, f"{file}: no recipe in the PNG text ({sorted(im.info)})"
    for node in _nodes_by_type(ui, "CLIFSaveConceptFile"):
        from clif_core.concepts.files import load_concept_file

        written = Path(outputs[str(node["id"])]["text"][0])
        assert written.is_file()
        assert load_concept_file(written).concepts, f"{written} holds no concepts"
    TIMINGS[path.stem] = time.monotonic() - began
    print(f"{path.stem}: {TIMINGS[path.stem]:.1f} s (steps lowered: {', '.join(lowered)})")
