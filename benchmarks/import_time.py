"""How much the pack adds to ComfyUI's start-up: import time and the modules its import pulls in.

Usage: python benchmarks/import_time.py COMFYUI_DIR [--repeat N]

Runs in a fresh interpreter per repeat: first what ComfyUI itself has loaded before it imports custom
nodes (comfy_api, folder_paths, nodes), then the pack's own __init__; prints the median added time and
the heavy modules (diffusers, transformers, peft, segment_anything, skimage...) the pack's import loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
HEAVY = ("diffusers", "transformers", "peft", "accelerate", "segment_anything", "skimage", "open_clip")

_PROBE = r"""
import importlib.util, json, sys, time
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, {comfy!r})
import comfy.options
comfy.options.enable_args_parsing()
import folder_paths, nodes, comfy_api.v0_0_2  # what ComfyUI has loaded before custom nodes
before = set(sys.modules)
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("comfyui_clif", {init!r}, submodule_search_locations=[{pack!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["comfyui_clif"] = module
spec.loader.exec_module(module)
seconds = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
print(json.dumps({{"seconds": seconds, "new_modules": new}}))
"""


def measure_once(comfy_dir: Path, python: str = sys.executable) -> dict:
    code = _PROBE.format(comfy=str(comfy_dir), init=str(PACK_DIR / "__init__.py"), pack=str(PACK_DIR))
    out = subprocess.run([python, "-c", code], cwd=comfy_dir, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def heavy_modules(new_modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in new_modules if m.split(".")[0] in HEAVY})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfy_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [measure_once(args.comfy_dir) for _ in range(args.repeat)]
    times = [r["seconds"] for r in runs]
    print(f"pack import time: median {statistics.median(times) * 1000:.1f} ms over {len(times)} runs "
          f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    print(f"modules added by the pack: {len(runs[0]['new_modules'])}; heavy ones: "
          f"{heavy_modules(runs[0]['new_modules']) or 'none'}")


if __name__ == "__main__":
    main()
