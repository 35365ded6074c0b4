"""Filesystem faults and concurrent runs: a full disk, a read-only folder or a permission problem in any
command is a ClifError naming the path and what to do, with the previous files intact and no temp left; a
save killed with SIGKILL leaves only temps the next write sweeps; a folder one process writes is refused to
a second one; trainers stop when their weights turn non-finite. docs/refusals.md lists the rules.

Faults are simulated by making `os.replace` (the last step of every atomic write) or safetensors fail: the
tests run as root, which chmod does not stop."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clif_core.concepts.files import save_concept_file
from clif_core.errors import ClifError
from clif_core.fileio import atomic_dir, filesystem_errors, in_use, save_safetensors_atomic, write_text_atomic
from clif_core.training.checkpoint import list_checkpoints, load_checkpoint
from clif_core.training.loop import WEIGHT_CHECK_EVERY
from tests.comfyui.rig import REPO_ROOT
from tests.helpers.cli import run_cli
from tests.helpers.concept_files import make_concept_file
from tests.helpers.datasets import figure, make_dataset
from tests.helpers.files import snapshot_files
from tests.helpers.toy_training import ToyTask, config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAULTS = {errno.ENOSPC: "disk is full", errno.EROFS: "read-only", errno.EACCES: "permission denied",
          errno.EDQUOT: "quota"}


def fail_replace(monkeypatch, code: int, under: Path) -> None:
    """`os.replace` onto anything under `under` fails with `code` (the disk filling up at the last moment)."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(under)):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".lock")) or ".old-" in p.name
            or p.name.startswith(".tmp")]


# ----------------------------------------------------------------------------------- the atomic writers


def _write_text(path: Path) -> None:
    write_text_atomic(path, "new")


def _write_safetensors(path: Path) -> None:
    save_safetensors_atomic({"x": torch.ones(3)}, path)


def _write_folder(path: Path) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text("new")


WRITERS = {"text": _write_text, "safetensors": _write_safetensors, "folder": _write_folder}


@pytest.mark.parametrize("code", sorted(FAULTS))
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failing_write_names_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch, writer, code):
    target = tmp_path / "out" / "target"
    if writer == "folder":
        target.mkdir(parents=True)
        (target / "a.txt").write_text("old")
    else:
        target.parent.mkdir()
        target.write_text("old")
    before = snapshot_files(tmp_path)
    fail_replace(monkeypatch, code, tmp_path)
    with pytest.raises(ClifError) as info:
        WRITERS[writer](target)
    assert str(target) in str(info.value) and FAULTS[code] in str(info.value)
    assert "unchanged" in str(info.value)
    assert snapshot_files(tmp_path) == before and not temps(tmp_path)


def test_safetensors_own_io_errors_are_mapped_too(tmp_path, monkeypatch):
    """safetensors reports a full disk as a SafetensorError whose text carries the OS error number."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).with_name(".tmpAbC123").write_bytes(b"x" * 100)  # its own temp, beside the target
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ClifError, match="disk is full"):
        save_safetensors_atomic({"x": torch.ones(3)}, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_maps_filesystem_errors_raised_anywhere(tmp_path, capsys, monkeypatch):
    import clif_core.concepts.cli as concepts_cli

    def unreadable(args):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "in.safetensors"))

    monkeypatch.setattr(concepts_cli, "_inspect", unreadable)
    code, err = run_cli(["concepts", "inspect", str(tmp_path / "in.safetensors")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{tmp_path / 'in.safetensors'}: permission denied" in err
    with pytest.raises(FileNotFoundError), filesystem_errors(tmp_path):  # not a fault the user can fix: unchanged
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")


# ---------------------------------------------------------------------------------- every entry point


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob", resolution=32, n_global=2, n_region=0,
                        n_mix=2, n_single=2)


def _entry_points(tiny, dataset: Path, concept_set: Path, root: Path) -> dict[str, tuple[list[str], Path]]:
    """Each command with the path the failing write names; files it would replace already exist."""
    (root / "out.safetensors").write_bytes(b"the user's own file")
    (root / "models" / "loras").mkdir(parents=True)
    (root / "models" / "loras" / "set.safetensors").write_bytes(b"the user's own LoRA")
    (root / "pictures").mkdir()
    (root / "pictures" / "clif-0.png").write_bytes(b"the user's own picture")
    (root / "bob").mkdir()
    figure((40, 170, 40), (190, 140, 30)).save(root / "bob" / "0.png")
    embedding = root / "emb.safetensors"
    save_file({"emb_params": torch.full((1, 32), 0.5)}, str(embedding))
    base = str(tiny.single_file)
    return {
        "import": (["concepts", "import", str(root / "out.safetensors"), "--embedding", str(embedding),
                    "--family", "sd1", "--overwrite"], root / "out.safetensors"),
        "export": (["concepts", "export", str(concept_set), str(root / "models"), "--overwrite"],
                   root / "models" / "loras" / "set.safetensors"),
        "sample": (["sample", "--base", base, "--prompt", "a cat", "--out", str(root / "pictures"), "--steps", "2",
                    "--width", "64", "--height", "64", "--device", "cpu", "--overwrite"],
                   root / "pictures" / "clif-0.png"),
        "augment": (["augment", "--concept", str(root / "bob"), "<bob>", "man", "--mix", "0", "--global", "0",
                     "--region", "0", "--single", "1", "--resolution", "64", "--out", str(root / "ds")],
                    root / "ds"),
        "train": (["train", "stage2", "--dataset", str(dataset), "--base", base, "--run-dir", str(root / "run"),
                   "--steps", "1", "--batch-size", "1", "--device", "cpu"], root / "run" / "run.json"),
        "erase": (["erase", "--base", base, "--target", "a pig", "--out", str(root / "patch.safetensors"),
                   "--steps", "1", "--batch-size", "1", "--trajectories", "1", "--sample-steps", "2",
                   "--resolution", "32", "--device", "cpu"], root / "patch_run" / "run.json"),
    }


ENTRY_FAULTS = [("import", errno.ENOSPC), ("export", errno.EROFS), ("sample", errno.EACCES),
                ("augment", errno.ENOSPC), ("train", errno.EDQUOT), ("erase", errno.EROFS)]


@pytest.mark.parametrize("entry, code", ENTRY_FAULTS, ids=[e for e, _ in ENTRY_FAULTS])
def test_every_command_reports_a_filesystem_fault_and_keeps_the_previous_files(
        tiny_sd1, dataset, sd1, tmp_path, capsys, monkeypatch, entry, code):
    (tmp_path / "in").mkdir()
    concept_set = save_concept_file(make_concept_file(sd1, seed=5), tmp_path / "in" / "set.safetensors")
    root = tmp_path / "work"
    root.mkdir()
    argv, named = _entry_points(tiny_sd1, dataset, concept_set, root)[entry]
    before = snapshot_files(root)
    fail_replace(monkeypatch, code, root)
    status, err = run_cli(argv, capsys)
    assert status == 2 and "Traceback" not in err, err
    assert f"{named}: " in err and FAULTS[code] in err, err
    assert snapshot_files(root) == before and not temps(root)


# ------------------------------------------------------------------------------------------ killed saves

KILLED_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from clif_core.fileio import atomic_dir, atomic_path
target = Path(sys.argv[1])
if sys.argv[2] == "file":
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        tmp.with_name(".tmpXyZ123").write_bytes(b"a library's own temp")
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_dir(target) as tmp:
        (tmp / "000.png").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_save_killed_midway_leaves_the_old_file_and_the_next_write_sweeps_its_temps(tmp_path, kind):
    target = tmp_path / ("out.safetensors" if kind == "file" else "dataset")
    if kind == "file":
        target.write_bytes(b"old")
    else:
        target.mkdir()
        (target / "000.png").write_bytes(b"old")
    before = snapshot_files(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target), kind], cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in before and p.name != target.name)
    assert [n for n in left if n.startswith(f".{target.name}.clif-{proc.pid}-")]  # the dead run's temp
    assert {k: v for k, v in snapshot_files(tmp_path).items() if not k.startswith(".")} == before
    assert (target.read_bytes() if kind == "file" else (target / "000.png").read_bytes()) == b"old"
    write_text_atomic(tmp_path / "next.txt", "a later run")  # any write into the folder sweeps the dead temps
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with in_use(target):  # the dead run's lock (an flock dies with its process) does not block
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, "next.txt"])


def test_temps_of_a_live_process_are_left_alone(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".out.clif-{sleeper.pid}-0a1b2c3d.tmp"
        live.mkdir()
        write_text_atomic(tmp_path / "out", "x")
        assert live.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    write_text_atomic(tmp_path / "out", "y")
    assert not live.exists()


def test_a_folder_moved_aside_by_a_dead_run_is_put_back(tmp_path):
    """A run killed between atomic_dir's two renames leaves only the old folder, aside; it comes back."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    pid = int(dead.stdout)
    aside = tmp_path / f".dataset.old-clif-{pid}"
    aside.mkdir()
    (aside / "000.png").write_bytes(b"old")
    write_text_atomic(tmp_path / "other.txt", "x")
    assert (tmp_path / "dataset" / "000.png").read_bytes() == b"old" and not aside.exists()


# -------------------------------------------------------------------------------------- folders in use

HOLDER = """
import sys, time
from clif_core.fileio import in_use
with in_use(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture()
def held(tmp_path):
    """A second process holding tmp_path/run (as a training run would) until the test ends."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc
    proc.kill()
    proc.wait()


def test_a_folder_in_use_by_another_process_is_refused_naming_its_pid(held):
    run, proc = held
    with pytest.raises(ClifError, match=rf"{run} is in use by another run \(pid {proc.pid}\); wait for it"), \
            in_use(run):
        pass
    with pytest.raises(ClifError, match="in use by another run"), atomic_dir(run):  # the same lock
        pass
    proc.kill()
    proc.wait()
    with in_use(run):  # the holder's death released it
        pass


def test_a_second_training_run_on_the_same_folder_is_refused(held, tiny_sd1, dataset, capsys):
    run, proc = held
    code, err = run_cli(["train", "stage2", "--dataset", str(dataset), "--base", str(tiny_sd1.single_file),
                         "--run-dir", str(run), "--steps", "1", "--batch-size", "1", "--device", "cpu"], capsys)
    assert code == 2 and f"{run} is in use by another run (pid {proc.pid})" in err
    assert not run.exists()


def test_a_second_erasure_on_the_same_run_folder_is_refused(held, tiny_sd1, capsys):
    run, proc = held
    out = run.parent / "patch.safetensors"
    code, err = run_cli(["erase", "--base", str(tiny_sd1.single_file), "--target", "a pig", "--out", str(out),
                         "--run-dir", str(run), "--steps", "1", "--batch-size", "1", "--trajectories", "1",
                         "--sample-steps", "2", "--resolution", "32", "--device", "cpu"], capsys)
    assert code == 2 and f"in use by another run (pid {proc.pid})" in err
    assert not out.exists() and not run.exists()


def test_the_lock_is_released_and_removed_after_a_run_even_one_that_failed(tmp_path):
    with pytest.raises(RuntimeError), in_use(tmp_path / "run"):
        with pytest.raises(ClifError, match="in use"), in_use(tmp_path / "run"):  # not twice in one process either
            pass
        raise RuntimeError("the run failed")
    with in_use(tmp_path / "run"):
        pass
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- weights going non-finite


class ExplodingTask(ToyTask):
    """Finite losses, but from call `bad_from` on the gradient is infinite, so the weights turn NaN."""

    def __init__(self, bad_from: int):
        super().__init__()
        self.bad_from = bad_from

    def loss(self, batch):
        loss = super().loss(batch)
        if self.calls >= self.bad_from:
            w = self.model.weight
            loss = loss + torch.sqrt((w - w.detach()).abs()).sum()  # value 0, gradient infinite
        return loss


@pytest.mark.parametrize("bad_from, checkpoint_every, caught_at", [
    (6, 3, 6),  # caught before the checkpoint of step 6 is written
    (WEIGHT_CHECK_EVERY, 100, WEIGHT_CHECK_EVERY),  # caught by the periodic check
])
def test_weights_turning_non_finite_stop_the_run_before_anything_is_saved(tmp_path, bad_from, checkpoint_every,
                                                                         caught_at):
    cfg = config(max_grad_norm=0, checkpoint_every=checkpoint_every)
    with pytest.raises(ClifError) as info:
        train(ExplodingTask(bad_from), cfg, tmp_path / "run")
    message = str(info.value)
    assert f"trainable weights (linear/weight) became NaN or infinite at step {caught_at}" in message
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in kept] == ([3] if checkpoint_every == 3 else [])
    assert ("step-000003" in message) == bool(kept)
    for _, path in kept:
        assert all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path).params.values())


# ------------------------------------------------------------------------------- sandbox character specs


def test_a_character_name_that_leaves_out_is_refused_before_anything_is_written(tmp_path, capsys):
    spec = json.loads((REPO_ROOT / "clif_core" / "sandbox" / "characters.json").read_text(encoding="utf-8"))
    first = next(iter(spec["characters"]))
    spec["characters"] = {"../../ESCAPED": spec["characters"][first]}
    spec["pairs"] = []
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    before = snapshot_files(tmp_path)
    code, err = run_cli(["sandbox", "characters", "--spec", str(path), "--out", str(tmp_path / "out" / "a")],
                        capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{path}: the character name in characters is '../../ESCAPED'" in err
    assert snapshot_files(tmp_path) == before
    assert not (tmp_path / "out").exists() and not (tmp_path / "ESCAPED").exists()
