#!/usr/bin/env bash
# Sets up .venv and runs the main job on the embedded default model; results land in main-job-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/clif demo --out "${1:-main-job-output}"
