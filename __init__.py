"""ComfyUI entry point of the CLIF node pack (V3 node schema).

Only light modules are imported here: diffusers, transformers and the training code load on first use,
inside the nodes that need them, so adding the pack costs ComfyUI little start-up time.
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
try:  # installed with `pip install -e .`, or cloned into custom_nodes with only requirements.txt
    import clif_core  # noqa: F401
except ImportError:
    # Appended, not prepended: this folder holds a `nodes` package that must never shadow ComfyUI's
    # own top-level `nodes` module.
    sys.path.append(_PACK_DIR)

from .nodes import comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = None
__all__ = ["comfy_entrypoint"]
