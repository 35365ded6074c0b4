"""Adding the pack to ComfyUI must stay cheap: no heavy library is imported at start-up."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.comfyui.rig import ensure_comfyui

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "import_time.py"


def _import_time_module():
    spec = importlib.util.spec_from_file_location("import_time", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_import_pulls_in_no_heavy_library():
    bench = _import_time_module()
    result = bench.measure_once(ensure_comfyui())
    assert any(m.startswith("comfyui_clif.nodes") for m in result["new_modules"]), "the pack was not imported"
    assert bench.heavy_modules(result["new_modules"]) == []
    assert not any(m.startswith("clif_core.") and m != "clif_core.errors" for m in result["new_modules"]), (
        [m for m in result["new_modules"] if m.startswith("clif_core")]
    )
