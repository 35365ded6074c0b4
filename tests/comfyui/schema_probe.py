"""Runs inside ComfyUI's Python environment (see rig.comfy_subprocess_env): builds every pack node's schema, as
ComfyUI does at start-up, and prints each input's kind, default, limits, choices, tooltip and the clif_core
setting it stands for (nodes/widgets.py tags it) as JSON.

    python schema_probe.py

The tests (tests/test_options.py) judge the findings.
"""

from __future__ import annotations

import json

from pack_modules import pack_module  # this script's folder is sys.path[0]

MODULES = ("augment", "base_model", "concept_files", "erasure", "latents", "regional_concepts", "sampling",
           "training")


def _plain(value):
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def main() -> dict:
    from comfy.cli_args import args

    args.cpu = True
    found: dict = {}
    for name in MODULES:
        for node in pack_module(name).NODES:
            schema = node.define_schema()
            found[schema.node_id] = [{
                "id": i.id,
                "kind": type(i).__qualname__,
                "optional": bool(getattr(i, "optional", False)),
                "tooltip": getattr(i, "tooltip", None),
                "default": _plain(getattr(i, "default", None)),
                "min": _plain(getattr(i, "min", None)),
                "max": _plain(getattr(i, "max", None)),
                "options": list(getattr(i, "options", None) or []) or None,
                "clif_option": list(getattr(i, "clif_option", ()) or []) or None,
            } for i in schema.inputs]
    return found


if __name__ == "__main__":
    print(json.dumps(main()))
