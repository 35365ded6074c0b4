#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the whole test suite (real ComfyUI server included) on the
# newest supported ComfyUI, then the smaller every_comfyui set on the oldest (tests/comfyui/README.md).
# Arguments are passed to one pytest run on the default ComfyUI instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/python -m ruff check .  # lint first: [tool.ruff] in pyproject.toml
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q -ra "$@"
fi
.venv/bin/python -m pytest -q -ra
CLIF_COMFYUI=0.3.52 exec .venv/bin/python -m pytest -q -ra -m every_comfyui
