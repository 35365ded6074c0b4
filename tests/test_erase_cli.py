"""`clif erase` end to end on the tiny model: erase, export, merge, purify, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clif_core.cli import main
from clif_core.erase.patch import load_erasure_patch

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--steps", "2", "--batch-size", "1", "--trajectories", "1", "--sample-steps", "2", "--resolution", "32",
         "--lr", "1e-3", "--device", "cpu"]


@pytest.fixture(scope="module")
def patch_path(tiny_sd1, tmp_path_factory):
    out = tmp_path_factory.mktemp("erase_cli") / "no_pigs.safetensors"
    assert main(["erase", "--base", str(tiny_sd1.single_file), "--target", "a pig -> a cow", "--target", "van gogh",
                 "--preserve", "a dog", "--out", str(out), *SMALL]) == 0
    return out


def test_erase_writes_a_patch_and_keeps_its_run_folder(patch_path, capsys):
    patch = load_erasure_patch(patch_path)
    assert patch.erased_pairs() == [("a pig", "a cow"), ("van gogh", None)]
    assert patch.metadata["preserve"] == ["a dog"] and patch.metadata["method"] == "all-but-one"
    run = patch_path.with_name("no_pigs_run")
    assert (run / "run.json").is_file() and (run / "metrics.json").is_file() and (run / "pool.safetensors").is_file()


def test_export_merge_and_purify_commands(tiny_sd1, patch_path, tmp_path, capsys):
    assert main(["erase", "export", "--patch", str(patch_path), "--loras-dir", str(tmp_path / "loras")]) == 0
    assert (tmp_path / "loras" / "no_pigs.safetensors").is_file()
    assert main(["erase", "merge", "--base", str(tiny_sd1.single_file), "--patch", str(patch_path),
                 "--out", str(tmp_path / "merged.safetensors")]) == 0
    assert (tmp_path / "merged.safetensors").stat().st_size > 0
    Image.fromarray(np.full((72, 88, 3), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["erase", "purify", "--base", str(tiny_sd1.single_file), "--patch", str(patch_path),
                 "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "out.png"), "--steps", "2",
                 "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out.png").size == (88, 72)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--target", "pig -> pig"], "names itself as its alternative"),
    ([], "at least one --target"),
    (["--target", "pig", "--preserve", "a pig in the snow"], "contains the target"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_sd1, tmp_path, capsys, args, message):
    out = tmp_path / "p.safetensors"
    assert main(["erase", "--base", str(tiny_sd1.single_file), "--out", str(out), *args, *SMALL]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
