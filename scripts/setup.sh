#!/usr/bin/env bash
# Creates .venv with the pack and its dependencies. `--test` adds the test extras and ComfyUI's own
# requirements (the real ComfyUI server used by the tests is unpacked by the test fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CLIF_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# torch is not a runtime dependency of the pack (ComfyUI users bring their own); these builds lie on
# the project's machines and are the ones the tests are run with.
"$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null || "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" install -c tests/constraints.txt -e ".[test]" -r tests/comfyui/requirements.txt
  bash scripts/setup-browser.sh
else
  "${PIP[@]}" install -c tests/constraints.txt -e .
fi
