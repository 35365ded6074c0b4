"""Copies the pack's example pictures (bundled_input/) into ComfyUI's input/ folder at start-up.

The shipped workflows read their concept pictures from input/clif_examples/<character>/ (CLIF Concept (from
folder)) and the purification picture from input/clif_example_circle.png (Load Image), because both nodes only
list what is under input/. Files the user already has are never overwritten, so edited or deleted-and-replaced
examples stay as the user left them; a missing file is copied again. (The folder is not called examples/:
ComfyUI serves a pack's example/, examples/ or workflow/ folder as its template folder ahead of workflows/.)
"""

from __future__ import annotations

import os
import shutil

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundled_input")


def install_examples(input_dir: str, source: str = EXAMPLES_DIR) -> list[str]:
    """Copy every file under `source` into `input_dir` that is not there yet; return the copied relative paths."""
    copied = []
    for root, _dirs, files in os.walk(source):
        for name in sorted(files):
            src = os.path.join(root, name)
            rel = os.path.relpath(src, source)
            dst = os.path.join(input_dir, rel)
            if os.path.exists(dst):
                continue
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = f"{dst}.{os.getpid()}.tmp"
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            copied.append(rel)
    return copied


def install_into_comfy_input() -> None:
    """install_examples into ComfyUI's input/ (called once from the extension's get_node_list)."""
    import folder_paths

    try:
        install_examples(folder_paths.get_input_directory())
    except OSError as e:  # a read-only input folder must not stop the pack from loading
        print(f"[CLIF] could not copy the example pictures into input/: {e}")
