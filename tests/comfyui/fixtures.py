"""pytest plugin: the real-ComfyUI server fixture (load it with `pytest_plugins = ["tests.comfyui.fixtures"]`).

`comfy_server` starts one ComfyUI per test session (about 7 s on 2 CPU cores) with this repository linked
as custom_nodes/comfyui-clif and stops it at the end, also after failures and Ctrl-C. Tests that use it are
marked `comfy` automatically (deselect them with `-m "not comfy"`); when one fails, the server log written
during that test is attached to its report.
"""

from __future__ import annotations

import pytest

from .rig import REPO_ROOT, ComfyServer, ensure_comfyui

_LOG_START = pytest.StashKey[int]()
_SERVER = pytest.StashKey[ComfyServer]()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "comfy: runs the pack inside a real ComfyUI server")


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, request) -> ComfyServer:
    """A running ComfyUI server (see rig.ComfyServer: submit, wait, run, object_info, interrupt, models_dir…)."""
    ensure_comfyui()
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"))
    request.config.stash[_SERVER] = server
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    """Collect the repository root as a plain folder, not as a Python package.

    The root's __init__.py is ComfyUI's entry point to the pack and imports `comfy_api`, which exists
    only inside ComfyUI; pytest would import it to look for package-level setup functions.
    """
    if path == REPO_ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfy)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(_SERVER, None)
    if server is None or "comfy_server" not in getattr(item, "fixturenames", ()):
        return
    if call.when == "setup" and not report.failed:
        item.stash[_LOG_START] = server.log_size()
    elif report.failed:  # a failed setup (the server did not start) shows the log from its beginning
        start = item.stash.get(_LOG_START, 0)
        text = server.log_tail(lines=120, start=start) or "(the server logged nothing during this test)"
        report.sections.append(("ComfyUI server log", text))
