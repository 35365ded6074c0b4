"""The benchmark scripts still run: each at tiny sizes on the CPU (speed itself is never asserted here).

The GPU suite's --smoke runs all its scripts on the CPU with the tiny model and must write a JSON and a
markdown table with every section; the CPU comparisons run a step or two of each side on the sandbox model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SECTIONS = ("train_step", "sampling", "erase")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "2"}


def _run(args: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _script(name: str, *args: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    done = _run([sys.executable, str(BENCH / f"{name}.py"), *args, "--json", str(out)])
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name and payload["rows"] and payload["ratios"], done.stdout
    for key in payload["ratios"]:
        assert key.split(":")[0] in done.stdout  # printed as well as written
    return payload


@pytest.mark.comfy  # sampling.py's ComfyUI side runs the rig's ComfyUI
def test_gpu_suite_smoke_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite"
    _run(["bash", str(BENCH / "gpu_suite.sh"), "--smoke", "--out", str(out)])
    suite = json.loads((out / "suite.json").read_text())
    assert sorted(suite["sections"]) == sorted(SECTIONS)
    table = (out / "suite.md").read_text()
    for name in SECTIONS:
        section = suite["sections"][name]
        assert section["rows"] and section["ratios"], name
        assert f"## {name}" in table
        for row in section["rows"]:
            assert f"| {row['name']} |" in table
    names = [r["name"] for r in suite["sections"]["train_step"]["rows"]]
    assert names == ["plain, batch 1", "pack, batch 1", "plain, batch 4", "pack, batch 4"]
    sampling = [r["name"] for r in suite["sections"]["sampling"]["rows"]]
    assert {"clif sampler", "diffusers pipeline", "comfyui ksampler"} <= set(sampling)
    assert "plain diffusers ESD-x" in [r["name"] for r in suite["sections"]["erase"]["rows"]]


def test_train_step_cpu_compares_both_sides_with_peak_rss(tmp_path: Path) -> None:
    result = _script("train_step", "--cpu", "--steps", "2", "--warmup", "1", "--batches", "1", tmp_path=tmp_path)
    assert [r["name"] for r in result["rows"]] == ["plain, batch 1", "pack, batch 1"]
    assert all(r["peak RSS MiB"] > 0 and r["steps_s"] > 0 for r in result["rows"])
    assert set(result["ratios"]) == {"pack/plain images/s, batch 1", "pack/plain peak RSS MiB, batch 1"}


def test_stage1_step_compares_both_sides(tmp_path: Path) -> None:
    result = _script("stage1_step", "--steps", "2", "--warmup", "1", "--batches", "4", "--samples", "12",
                     tmp_path=tmp_path)
    assert [r["name"] for r in result["rows"]] == ["plain, batch 4", "pack, batch 4"]


@pytest.mark.comfy
def test_sampling_cpu_compares_concepts_and_peers(tmp_path: Path) -> None:
    result = _script("sampling", "--cpu", "--steps", "2", "--repeat", "1", tmp_path=tmp_path)
    assert {r["name"] for r in result["rows"]} == {
        "clif sampler", "clif sampler + concepts", "diffusers pipeline", "comfyui ksampler",
        "apply concepts + comfyui ksampler"}
    assert "clif sampler + concepts / clif sampler: it/s" in result["ratios"]


def test_erase_cpu_compares_with_plain_esd(tmp_path: Path) -> None:
    result = _script("erase", "--cpu", "--steps", "2", "--batch-size", "1", "--trajectories", "1",
                     "--sample-steps", "2", "--plain-steps", "1", tmp_path=tmp_path)
    assert [r["name"] for r in result["rows"]] == ["all-but-one (lora)", "esd-x (xattn)", "plain diffusers ESD-x"]
    assert len(result["ratios"]) == 2
