#!/usr/bin/env bash
# Sets up .venv with the test extras and runs the whole test suite (real ComfyUI server tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q -ra "$@"
