"""The shared training loop on a small regression task: learning, bit-identical resume (after a cancel, an
interrupt from the reporter and a crash), NaN stop keeping the last good checkpoint, the run folder's
resume rules, checkpoints kept, the loss curve files, mixed precision and accumulation."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from clif_core.errors import Cancelled, ClifError
from clif_core.progress import Reporter
from clif_core.training.checkpoint import list_checkpoints, load_checkpoint
from clif_core.training.curve import draw_loss_curve, read_loss_csv
from clif_core.training.precision import make_accelerator
from clif_core.training.run_folder import RunFolder
from tests.helpers.toy_training import ToyTask, config, train


def weights(task) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def stop_after(n_checks: int) -> Reporter:
    count = {"n": 0}

    def should_stop():
        count["n"] += 1
        return count["n"] > n_checks

    return Reporter(should_stop=should_stop, log=lambda m: None)


def test_loss_falls_and_run_folder_holds_checkpoints_and_curve(tmp_path):
    task = ToyTask()
    result = train(task, config(steps=30), tmp_path / "run")
    losses = [loss for _, loss, _ in result.history]
    assert len(losses) == 30 and result.resumed_from is None
    assert sum(losses[-5:]) / 5 < 0.2 * sum(losses[:5]) / 5
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in kept] == [27, 30]  # keep_checkpoints=2
    assert read_loss_csv(tmp_path / "run" / "loss.csv") == result.history
    with Image.open(tmp_path / "run" / "loss.png") as im:
        assert im.size[0] > 100
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").rglob("*"))
    # the trainable tensors are handed back without gradients
    assert all(not p.requires_grad for p in task.model.parameters())


def test_resume_after_cancel_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole = ToyTask()
    reference = train(whole, config(), tmp_path / "whole")

    first = ToyTask()
    with pytest.raises(Cancelled):
        train(first, config(), tmp_path / "split", reporter=stop_after(5))  # cancelled before step 6
    assert [s for s, _ in list_checkpoints(tmp_path / "split" / "checkpoints")] == [3, 5]  # 5: saved on cancel
    second = ToyTask()
    resumed = train(second, config(), tmp_path / "split")
    assert resumed.resumed_from == 5
    assert_bit_identical(weights(second), weights(whole))
    assert resumed.history == reference.history


def test_resume_after_an_interrupt_from_the_progress_callback(tmp_path):
    """ComfyUI's progress hook raises its own interrupt exception; the finished steps are kept."""
    whole = ToyTask()
    train(whole, config(), tmp_path / "whole")

    class HostInterrupt(Exception):
        pass

    def progress(step, total, preview=None):
        if step == 7:
            raise HostInterrupt()

    with pytest.raises(HostInterrupt):
        train(ToyTask(), config(), tmp_path / "split", reporter=Reporter(progress=progress, log=lambda m: None))
    assert list_checkpoints(tmp_path / "split" / "checkpoints")[-1][0] == 7
    second = ToyTask()
    train(second, config(), tmp_path / "split")
    assert_bit_identical(weights(second), weights(whole))


def test_resume_after_a_crash_mid_step_uses_the_periodic_checkpoint(tmp_path):
    whole = ToyTask()
    train(whole, config(grad_accum=2), tmp_path / "whole")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(ToyTask(crash_at_call=16), config(grad_accum=2), tmp_path / "split")  # during step 8
    assert list_checkpoints(tmp_path / "split" / "checkpoints")[-1][0] == 6  # nothing saved mid-step
    second = ToyTask()
    assert train(second, config(grad_accum=2), tmp_path / "split").resumed_from == 6
    assert_bit_identical(weights(second), weights(whole))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    task = ToyTask(nan_from_call=8)
    with pytest.raises(ClifError) as caught:
        train(task, config(checkpoint_every=2), tmp_path / "run")
    message = str(caught.value)
    assert "loss became nan at step 8" in message
    assert "step-000006.safetensors (step 6)" in message
    assert "learning rate" in message
    kept = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [s for s, _ in kept] == [4, 6]
    ckpt = load_checkpoint(kept[-1][1])
    assert all(torch.isfinite(t).all() for t in ckpt.params.values())
    assert [s for s, _, _ in read_loss_csv(tmp_path / "run" / "loss.csv")] == list(range(1, 7))


def test_run_folder_refuses_other_settings_but_accepts_more_steps(tmp_path):
    folder = tmp_path / "run"
    train(ToyTask(), config(steps=6), folder)
    with pytest.raises(ClifError, match=r"other settings: loop\.seed \(5 → 6\)"):
        train(ToyTask(), config(steps=6, seed=6), folder)
    extended = ToyTask()
    result = train(extended, config(steps=9), folder)  # more steps: resumes from 6
    assert result.resumed_from == 6 and len(result.history) == 9
    straight = ToyTask()
    train(straight, config(steps=9), tmp_path / "straight")
    assert_bit_identical(weights(extended), weights(straight))
    with pytest.raises(ClifError, match="already holds 9 steps"):
        train(ToyTask(), config(steps=4), folder)
    run = RunFolder(folder)
    run.open({"task": "toy", "loop": config(steps=4).to_dict()}, restart=True)
    assert run.checkpoints() == [] and not run.loss_csv.exists()


def test_finished_run_is_not_trained_again(tmp_path):
    task = ToyTask()
    train(task, config(steps=6), tmp_path / "run")
    again = ToyTask()
    result = train(again, config(steps=6), tmp_path / "run")
    assert again.calls == 0 and result.resumed_from == 6
    assert_bit_identical(weights(again), weights(task))


def test_bf16_autocast_and_bad_settings(tmp_path):
    task = ToyTask()
    result = train(task, config(steps=4, mixed_precision="bf16"), tmp_path / "run")
    assert result.precision == "bf16" and all(math.isfinite(h[1]) for h in result.history)
    assert all(p.dtype == torch.float32 for p in task.model.parameters())
    with pytest.raises(ClifError, match="fp16 needs a CUDA GPU"):
        make_accelerator(config(mixed_precision="fp16"), torch.device("cpu"))
    with pytest.raises(ClifError, match="batch_size is 0"):
        config(batch_size=0).check()
    with pytest.raises(ClifError, match="no full batch of 32"):
        train(ToyTask(), config(batch_size=32), tmp_path / "big")


def test_loss_curve_drawing_handles_empty_single_and_flat_histories():
    for history in ([], [(1, 0.5, 1e-4)], [(1, 0.5, 1e-4), (2, 0.5, 1e-4)], [(1, 2.0, 0.1), (2, float("nan"), 0.1)]):
        image = draw_loss_curve([("a", history), ("b", history)])
        assert image.size == (768, 640)
