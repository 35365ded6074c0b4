"""The shipped workflows in the test server's own frontend, in headless Chromium.

Debian's chromium (apt-get) driven by playwright-core from npm (in .cache/browser-test/, no browser download),
both installed by `scripts/setup.sh --test`. Each workflows/*.json is loaded through the editor's own loading
path (app.loadGraphData, what opening a file or a template does): no missing-node dialog, no console errors,
every node type known, the node count equal to the file's, and the editor's own graphToPrompt giving the same
API prompt as comfy-cli's converter (so the widget values sit where the file says). One workflow is queued with
the editor's Run button and its images must appear on its save nodes. Screenshots go to test-artefacts/browser/
(git-ignored): each whole graph, and each group at 100% zoom (scripts/docs_images.py copies those into the docs). Without chromium the test skips, except in CI (CI set), where it must run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.workflow_tools import REPO_ROOT, WORKFLOWS_DIR, default_base_model, ensure_concept_files, prepare_server

CHROMIUM = Path("/usr/bin/chromium")
NODE_MODULES = REPO_ROOT / ".cache" / "browser-test" / "node_modules"
ARTEFACTS = REPO_ROOT / "test-artefacts" / "browser"
SCRIPT = Path(__file__).parent / "browser" / "workflows.mjs"
QUEUED = "clif_3_concepts_in_stock_graph"  # the quickest shipped workflow on CPU


def _missing_tools() -> list[str]:
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if not shutil.which("node"):
        missing.append("node")
    if not (NODE_MODULES / "playwright-core").is_dir():
        missing.append(f"playwright-core in {NODE_MODULES.parent}")
    return missing


@pytest.fixture(scope="module")
def browser_tools():
    missing = _missing_tools()
    if missing:
        message = f"browser test needs {', '.join(missing)}: run `bash scripts/setup.sh --test` (as root for apt-get)"
        if os.environ.get("CI") or CHROMIUM.is_file():
            pytest.fail(message)  # in CI, or with chromium present, a missing piece is a setup bug
        pytest.skip(message)


# A fresh user directory has none of these per-user files; the frontend asks for each once at start-up.
FRESH_USER_404 = re.compile(r"^404 http://127\.0\.0\.1:\d+/(user\.css|api/userdata/user\.css|"
                            r"api/userdata\?dir=(workflows|subgraphs%2F)&.*|api/userdata/comfy\.templates\.json)$")
# The frontend looks node packs up in the online registry; ComfyUI's content security policy blocks it offline.
REGISTRY_BLOCKED = re.compile(r"^Connecting to 'https://api\.comfy\.org/.*violates the following Content Security")
# Frontend 1.32.9's canvas mount (useRenderModeSetting's `load` in GraphView) sometimes writes
# LiteGraph.Canvas.MinFontSizeForLOD before the setting is registered; its settings store then throws in onChange.
# A start-up race of the editor itself, before any workflow is touched.
FRONTEND_MOUNT_RACE = re.compile(r"^TypeError: Cannot read properties of undefined \(reading 'id'\)\n\s+at onChange "
                                 r"\(.*\n\s+at Proxy\.set .*\n.*\n\s+at load \(\S+/assets/GraphView-")
FAILED_LOAD = "Failed to load resource: the server responded with a status of 404 (Not Found)"


def _unexplained_errors(errors: list[dict], failed_requests: list[dict]) -> list[dict]:
    """Console errors other than the offline registry look-ups and a fresh user's start-up 404s.

    A 404 line names no URL (and Chromium logs one more of them than Playwright reports responses), so start-up
    404 lines are excused only while every failed start-up request it reports is a fresh-user file, and never
    after start-up: loading or queuing a workflow must log no error beyond the blocked registry look-ups.
    """
    startup_404s = [r for r in failed_requests if r["phase"] == "startup"]
    fresh_only = all(FRESH_USER_404.match(r["text"]) for r in startup_404s)
    left = []
    for error in errors:
        if REGISTRY_BLOCKED.match(error["text"]):
            continue
        if error["phase"] == "startup" and error["text"] == FAILED_LOAD and fresh_only:
            continue
        if error["phase"] == "startup" and FRONTEND_MOUNT_RACE.match(error["text"]):
            continue
        left.append(error)
    return left


def _api_equal(ui_prompt: dict, cli_prompt: dict) -> list[str]:
    """Differences between the editor's API prompt and comfy-cli's, input by input."""
    diffs = []
    for node_id in sorted(set(ui_prompt) | set(cli_prompt)):
        a, b = ui_prompt.get(node_id), cli_prompt.get(node_id)
        if a is None or b is None:
            diffs.append(f"node {node_id} only in {'comfy-cli' if a is None else 'the editor'}")
            continue
        if a["class_type"] != b["class_type"]:
            diffs.append(f"node {node_id}: {a['class_type']} vs {b['class_type']}")
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(name) != b["inputs"].get(name):
                diffs.append(f"node {node_id} {name}: editor {a['inputs'].get(name)!r}, "
                             f"comfy-cli {b['inputs'].get(name)!r}")
    return diffs


def test_workflows_in_the_browser(browser_tools, comfy_server, tmp_path):
    from comfy_cli.workflow_to_api import convert_ui_to_api

    began = time.monotonic()
    prepare_server(comfy_server, tmp_path / "models")
    ensure_concept_files(comfy_server, default_base_model(comfy_server.object_info()))  # unless training ran
    # A returning user: no first-visit template browser over the canvas (the missing-node warning stays on).
    comfy_server._request("POST", "/settings/Comfy.TutorialCompleted", True)
    # Screenshots of whole graphs are zoomed out: keep node text drawn there (the editor hides it below 8 px).
    comfy_server._request("POST", "/settings/LiteGraph.Canvas.MinFontSizeForLOD", 1)
    comfy_server._request("POST", "/settings/Comfy.Minimap.Visible", False)  # nothing over the group screenshots
    workflows = sorted(WORKFLOWS_DIR.glob("*.json"))
    assert any(p.stem == QUEUED for p in workflows)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    job = {
        "url": comfy_server.url, "chromium": str(CHROMIUM), "nodeModules": str(NODE_MODULES),
        "userDataDir": str(tmp_path / "chromium-profile"), "artefacts": str(ARTEFACTS),
        "workflows": [{"name": p.stem, "path": str(p)} for p in workflows], "queue": QUEUED, "steps": 2,
        "timeoutMs": 300_000, "viewport": {"width": 2400, "height": 1500},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = subprocess.run(["node", str(SCRIPT), str(tmp_path / "job.json")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"browser script failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])

    info = comfy_server.object_info()
    for loaded in result["loaded"]:
        name = loaded["name"]
        assert not loaded["dialogs"], f"{name}: a dialog opened on load: {loaded['dialogs']}"
        assert not loaded["missingTypes"], f"{name}: unknown node types in the editor: {loaded['missingTypes']}"
        assert loaded["nodes"] == loaded["fileNodes"], f"{name}: {loaded['nodes']} nodes, file has {loaded['fileNodes']}"
        ui = json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
        diffs = _api_equal(loaded["prompt"], convert_ui_to_api(ui, info))
        assert not diffs, f"{name}: the editor and comfy-cli disagree:\n" + "\n".join(diffs)
        assert (ARTEFACTS / f"{name}.png").is_file()
        assert len(loaded["groupShots"]) == len(ui["groups"]), f"{name}: one screenshot per group"
        for shot in loaded["groupShots"]:  # at 100% zoom, the whole group: the widgets read as in the editor
            assert shot["scale"] == 1, f"{name}: {shot['file']} at zoom {shot['scale']}"
            with Image.open(ARTEFACTS / shot["file"]) as im:
                assert list(im.size) == shot["size"], f"{name}: {shot['file']} is {im.size}, not {shot['size']}"
            assert all(side >= group for side, group in zip(shot["size"], shot["groupSize"])), shot
    unexplained = _unexplained_errors(result["consoleErrors"], result["failedRequests"])
    assert not unexplained, ("console errors:\n" + "\n".join(map(str, unexplained))
                             + "\nfailed requests:\n" + "\n".join(map(str, result["failedRequests"])))

    queued = result["queued"]
    assert queued["newPrompts"], "the Run button queued nothing"
    for shown in queued["shown"]:
        assert shown["images"] and all(w >= 16 and h >= 16 for w, h in shown["size"]), shown
        for image in shown["images"]:
            assert (comfy_server.output_dir / image.get("subfolder", "") / image["filename"]).is_file(), image
    print(f"browser: {len(result['loaded'])} workflows loaded, {queued['name']} queued via {queued['how']} "
          f"in {time.monotonic() - began:.1f} s; screenshots in {ARTEFACTS}")
