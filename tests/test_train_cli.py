"""`clif train`: both stages from a dataset folder and a checkpoint file, resuming on a second call, bad
input reported, and two CPU processes under `accelerate launch` (gloo) writing a valid file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from clif_core.cli import main as clif_main
from clif_core.concepts.files import load_concept_file
from clif_core.models.loader import load_base_model
from tests.comfyui.rig import REPO_ROOT
from tests.helpers.datasets import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob", resolution=32, n_global=2, n_region=0,
                        n_mix=2, n_single=2)


def read(path) -> tuple[dict, dict]:
    """(metadata, tensors); safetensors writes metadata in no fixed order, so bytes may differ."""
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def both_args(tiny, dataset, run_dir, out, *extra: str) -> list[str]:
    return ["train", "both", "--dataset", str(dataset), "--base", str(tiny.single_file), "--vision",
            str(tiny.vision_dir), "--run-dir", str(run_dir), "--out", str(out), "--s1-steps", "3",
            "--s1-batch-size", "2", "--s2-steps", "3", "--s2-batch-size", "2", "--lora-rank", "2",
            "--preview-steps", "0", "--log-every", "1", "--checkpoint-every", "2", "--holdout", "0", *extra]


def test_clif_train_both_writes_a_concept_file_and_resumes(tiny_sd1, dataset, tmp_path, capsys):
    out = tmp_path / "alice_bob.safetensors"
    assert clif_main(both_args(tiny_sd1, dataset, tmp_path / "run", out, "--preview-every", "3")) == 0
    cf = load_concept_file(out, base=load_base_model(tiny_sd1.single_file))
    assert [c.token for c in cf.concepts] == ["<alice>", "<bob>"] and cf.unet_lora
    assert set(cf.recipe) == {"stage1", "stage2"}
    assert (tmp_path / "run" / "stage1" / "stage1.safetensors").is_file()
    assert (tmp_path / "run" / "stage2" / "loss.png").is_file()
    assert (tmp_path / "run" / "stage2" / "previews" / "step-000003.png").is_file()
    printed = capsys.readouterr().out
    assert "alice, bob (concepts, base sd1" in printed and "concept_cosine" in printed  # the report
    assert f"written to {tmp_path / 'run' / 'stage2' / 'concepts.safetensors'}" in printed

    before = read(out)
    # finished: running again refuses to replace --out unless asked; with --overwrite it trains nothing and
    # writes the same file
    assert clif_main(both_args(tiny_sd1, dataset, tmp_path / "run", out, "--preview-every", "3")) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert clif_main(both_args(tiny_sd1, dataset, tmp_path / "run", out, "--preview-every", "3", "--overwrite")) == 0
    after = read(out)
    assert after[0] == before[0] and after[1].keys() == before[1].keys()
    assert all(torch.equal(after[1][k], before[1][k]) for k in before[1])
    printed = capsys.readouterr()
    assert "resuming from step 3" in printed.out + printed.err


def test_clif_train_reports_bad_input_without_a_traceback(tiny_sd1, tmp_path, capsys):
    code = clif_main(["train", "stage2", "--dataset", str(tmp_path / "nope"), "--base", str(tiny_sd1.single_file),
                      "--run-dir", str(tmp_path / "run"), "--steps", "1"])
    assert code == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    code = clif_main(["train", "stage2", "--dataset", str(tmp_path), "--base", str(tiny_sd1.single_file),
                      "--run-dir", str(tmp_path / "run"), "--lora-targets", "conv_in"])
    assert code == 2
    assert "UNet LoRA targets ['conv_in']" in capsys.readouterr().err


def test_two_cpu_processes_under_accelerate_launch(tiny_sd1, dataset, tmp_path):
    out = tmp_path / "launched.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "clif_core.cli", *both_args(tiny_sd1, dataset, tmp_path / "run", out, "--s2-batch-size", "1")]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 process(es)" in done.stdout + done.stderr
    cf = load_concept_file(out, base=load_base_model(tiny_sd1.single_file))
    assert cf.unet_lora and [c.token for c in cf.concepts] == ["<alice>", "<bob>"]
    assert len(list((tmp_path / "run" / "stage2" / "checkpoints").iterdir())) == 2
