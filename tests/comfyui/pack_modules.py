"""Import one of the pack's `nodes/` modules inside ComfyUI's Python environment.

The repository's `nodes` package would clash with ComfyUI's own top-level `nodes` module, and its
__init__ registers the extension; the modules are imported as submodules of an alias package instead,
so their relative imports (`from . import comfy_compat`) resolve and __init__ does not run.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ALIAS = "clif_pack_nodes"
NODES_DIR = Path(__file__).resolve().parents[2] / "nodes"


def pack_module(name: str) -> types.ModuleType:
    """nodes/<name>.py, imported as clif_pack_nodes.<name>."""
    if ALIAS not in sys.modules:
        package = types.ModuleType(ALIAS)
        package.__path__ = [str(NODES_DIR)]
        sys.modules[ALIAS] = package
    return importlib.import_module(f"{ALIAS}.{name}")
