#!/usr/bin/env bash
# The GPU check, ready for the day an accelerator is lent: under 8 minutes on one H100.
#
#   bash benchmarks/gpu_suite.sh [--out DIR]      # GPU: figures into DIR (default gpu-suite-output/)
#   bash benchmarks/gpu_suite.sh --smoke          # CPU, tiny model, a few steps: checks that it all runs
#
# 1. train_step.py: the pack's stage-2 step vs plain diffusers+peft, SD1.5 architecture, 512 px, batch 1 and 4;
#    SDXL architecture peak memory at 1024 px with and without gradient checkpointing;
# 2. sampling.py: CLIF Sampler vs diffusers' pipeline and ComfyUI's KSampler (the rig's ComfyUI, .cache/);
# 3. erase.py: All-but-One and ESD-x per concept at the pack's budget vs a plain diffusers ESD-x step.
# Each script writes its --json file into DIR; benchmarks/suite_report.py joins them into DIR/suite.json and
# DIR/suite.md. The Python is $PYTHON (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
out="gpu-suite-output"
smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --out) out="$2"; shift ;;
        *) echo "usage: bash benchmarks/gpu_suite.sh [--smoke] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out"

if [ "$smoke" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    train=(--tiny --steps 2 --warmup 1 --batches 1,4)
    sampling=(--smoke)
    erase=(--tiny --steps 2 --batch-size 1 --trajectories 1 --sample-steps 2 --plain-steps 1)
else
    train=(--sdxl --steps 30 --warmup 5 --batches 1,4)
    sampling=(--repeat 3)
    erase=(--runs all-but-one:auto esd-x:auto)
fi

start=$(date +%s)
for step in "train_step ${train[*]}" "sampling ${sampling[*]}" "erase ${erase[*]}"; do
    name="${step%% *}"
    echo "== $name"
    # shellcheck disable=SC2086
    "$python" "$here/$name.py" ${step#* } --json "$out/$name.json"
done
"$python" "$here/suite_report.py" "$out/train_step.json" "$out/sampling.json" "$out/erase.json" \
    --json "$out/suite.json" --markdown "$out/suite.md"
echo "suite: $out/suite.json, $out/suite.md ($(( $(date +%s) - start )) s)"
