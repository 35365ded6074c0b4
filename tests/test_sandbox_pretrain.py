"""Sandbox pretraining on a miniature architecture: every stage runs, stops, resumes and exports a model the
pack's loader reads like any user's diffusers folder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from clif_core.errors import Cancelled, ClifError
from clif_core.progress import Reporter
from clif_core.sandbox.pretrain import export_model, pretrain
from clif_core.sandbox.pretrain_config import PRESETS, STAGES
from clif_core.sandbox.pretrain_store import load_state

CFG = PRESETS["test"]
TOTAL = sum(CFG.stage(s).steps for s in STAGES)


def _run(work, **kw):
    return pretrain(CFG, work, device="cpu", render_workers=1, **kw)


def test_stop_resume_export_and_load(tmp_path):
    work = tmp_path / "work"
    calls = []

    def stop_after_six():  # progress comes at each stage's start and after each step
        return len(calls) >= 6

    reporter = Reporter(progress=lambda s, t, p=None: calls.append((s, t)), should_stop=stop_after_six, log=lambda m: None)
    with pytest.raises(Cancelled, match="run the same command to resume"):
        _run(work, reporter=reporter)
    state = load_state(work)
    assert (state.stage, state.step) == ("clip", 1)  # 3 VAE steps, then 1 of CLIP
    assert (work / "clip" / "checkpoints" / "step-000001.safetensors").is_file()  # the shared loop's checkpoint
    assert not list((work / "vae" / "checkpoints").iterdir())  # a finished stage's weights are in checkpoint/
    with pytest.raises(ClifError, match="has not reached the end of pretraining"):
        export_model(work, tmp_path / "model")
    with pytest.raises(ClifError, match="has not reached a UNet checkpoint"):
        export_model(work, tmp_path / "model", unfinished=True)

    resumed = []
    state = _run(work, reporter=Reporter(progress=lambda s, t, p=None: resumed.append(s), log=lambda m: None))
    assert state.done
    assert resumed[0] == 4 and resumed[-1] == TOTAL  # continued where it stopped, no stage repeated
    assert set(state.cpu_seconds) == set(STAGES) and state.scaling_factor > 0
    ceiling = state.vae_ceiling  # the oracle on the VAE's reconstructions, measured when the VAE stage ended
    assert ceiling["renders"] == 16 and 0 <= ceiling["reconstructed"]["scene"] <= 1
    assert ceiling["clean"]["scene"] >= 0.5  # the oracle reads real renders; a test-size VAE's output it cannot
    assert set(ceiling["per_set"]) == {"one_object", "two_objects", "figures"}  # the prompt sets' own ceilings
    assert ceiling["per_set"]["one_object"]["clean"] >= 0.6

    paths = export_model(work, tmp_path / "model")
    from clif_core.models.loader import load_base_model

    base = load_base_model(paths.diffusers_dir, device="cpu")
    assert base.family == "sd1" and base.prediction_type == "v_prediction"
    assert base.unet.config.sample_size == 16 and base.vae.config.scaling_factor == pytest.approx(state.scaling_factor)
    record = json.loads((paths.diffusers_dir / "sandbox_model.json").read_text())
    assert record["quality"] == "test" and record["fingerprint"] == base.fingerprint

    from transformers import CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection.from_pretrained(paths.vision_dir, local_files_only=True)
    assert vision.config.projection_dim == base.text[0].width
    assert json.loads((paths.vision_dir / "contrastive.json").read_text())["logit_scale"] > 0

    from clif_core.sandbox.prompt_following import generate

    images = generate(base, ["a red circle", "a blue star on the left and a green heart on the right"], steps=2)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


def test_a_time_limit_stops_after_a_step_with_a_checkpoint(tmp_path):
    work = tmp_path / "work"
    state = pretrain(CFG, work, device="cpu", render_workers=1, max_minutes=1e-9)
    assert not state.done and (state.stage, state.step) == ("vae", 1)  # one step, then the deadline
    assert (work / "vae" / "checkpoints" / "step-000001.safetensors").is_file()
    assert load_state(work).seconds["vae"] > 0  # the record keeps the time spent
    assert pretrain(CFG, work, device="cpu", render_workers=1).done


def test_a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    """The UNet stage stopped after its first step resumes with its weights, Adam and EMA state and the same
    batches and noise: the exported weights equal those of a run never stopped."""
    from safetensors.torch import load_file

    whole = _run(tmp_path / "whole")
    first_unet_step = sum(CFG.stage(s).steps for s in ("vae", "clip")) + 1
    seen = []
    stop = Reporter(progress=lambda s, t, p=None: seen.append(s), should_stop=lambda: first_unet_step in seen,
                    log=lambda m: None)
    with pytest.raises(Cancelled):
        _run(tmp_path / "split", reporter=stop)
    assert (load_state(tmp_path / "split").stage, load_state(tmp_path / "split").step) == ("unet", 1)
    split = _run(tmp_path / "split")
    assert whole.done and split.done
    for name in ("unet", "unet_ema", "vision"):
        a = load_file(str(tmp_path / "whole" / "checkpoint" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_other_settings_refuse_to_resume_but_unfinished_stages_may_change_length(tmp_path):
    work = tmp_path / "work"
    pretrain(CFG, work, device="cpu", render_workers=1, max_minutes=1e-9)
    assert (load_state(work).stage, load_state(work).step) == ("vae", 1)
    for other in (replace(CFG, seed=1), replace(CFG, vae=replace(CFG.vae, lr=2e-3)),
                  replace(CFG, vae=replace(CFG.vae, steps=1))):  # not more steps than the stage has done
        with pytest.raises(ClifError, match="other settings"):
            pretrain(other, work, device="cpu", render_workers=1)
    assert load_state(work).config == json.loads(json.dumps(CFG.to_json()))  # a refusal changes nothing

    longer = replace(CFG, vae=replace(CFG.vae, steps=5), unet=replace(CFG.unet, steps=2))
    state = pretrain(longer, work, device="cpu", render_workers=1)
    assert state.done and state.schedule_changes == [
        {"stage": "vae", "at_step": 1, "steps_before": 3, "steps_after": 5},
        {"stage": "unet", "at_step": 0, "steps_before": 4, "steps_after": 2}]
    record = json.loads((export_model(work, tmp_path / "model").diffusers_dir / "sandbox_model.json").read_text())
    assert record["schedule_changes"] == state.schedule_changes
    assert record["stages"]["vae"]["steps"] == 5 and record["config"]["unet"]["steps"] == 2


def test_text_checkpoint_keeps_only_trained_rows(tmp_path):
    """Token rows the world never uses stay at their seeded initial values, so checkpoints store only the rest."""
    work = tmp_path / "work"
    cfg = replace(CFG, unet=replace(CFG.unet, steps=1))
    pretrain(cfg, work, device="cpu", render_workers=1)
    from safetensors import safe_open

    with safe_open(str(work / "checkpoint" / "text.safetensors"), "pt") as f:
        ids = f.get_tensor(next(k for k in f.keys() if k.endswith("token_embedding.weight.changed_ids")))
    assert 10 < len(ids) < 2000  # the world's few hundred caption tokens, not the 49,408-row table


def test_unet_snapshot_is_a_learning_curve_point(tmp_path):
    """Mid-UNet-stage EMA weights export as a loadable model whose record names the step; its prompt-following
    report becomes a point of the curve JSON and PNG."""
    work = tmp_path / "work"
    seen = []
    two_unet_steps = sum(CFG.stage(s).steps for s in ("vae", "clip")) + 2
    stop_in_unet = Reporter(progress=lambda s, t, p=None: seen.append(s), should_stop=lambda: two_unet_steps in seen,
                            log=lambda m: None)
    with pytest.raises(Cancelled):
        _run(work, reporter=stop_in_unet)
    state = load_state(work)
    assert state.stage == "unet" and state.step == 2
    paths = export_model(work, tmp_path / "snap", unfinished=True)
    record = json.loads((paths.diffusers_dir / "sandbox_model.json").read_text())
    assert record["unfinished"] == {"stage": "unet", "step": state.step, "of": CFG.unet.steps}

    from clif_core.sandbox.learning_curve import add_point

    report = {"prompt_following": {"sets": {"one_object": {"fully_correct": 0.25}, "two_objects": {"fully_correct": 0.0},
                                             "figures": {"fully_correct": 0.5}}}}
    curve = tmp_path / "curve.json"
    add_point(curve, paths.diffusers_dir, report)
    points = add_point(curve, paths.diffusers_dir, report)  # the same step again replaces its point
    assert points == [{"step": state.step, "images_seen": state.step * CFG.unet.batch_size, "one_object": 0.25,
                       "two_objects": 0.0, "figures": 0.5}]
    from PIL import Image

    assert Image.open(curve.with_suffix(".png")).size[0] > 100


def test_a_rescheduled_stage_keeps_its_learning_rate_continuous_and_ends_at_zero():
    from clif_core.sandbox.pretrain_config import StageConfig
    from clif_core.sandbox.pretrain_stages import lr_schedule

    stage = StageConfig(steps=12_000, batch_size=64, lr=5e-4, warmup=200)
    first = lr_schedule(replace(stage, steps=20_000))
    change = {"stage": "unet", "at_step": 4_900, "steps_before": 20_000, "steps_after": 12_000}
    after = lr_schedule(stage, [change])
    assert [after(t) for t in range(0, 4_901, 7)] == [first(t) for t in range(0, 4_901, 7)]  # the past as it was
    values = [after(t) for t in range(4_900, 12_001)]
    assert max(abs(b - a) for a, b in zip(values, values[1:])) < 1e-3  # no jump at the change
    assert all(b <= a for a, b in zip(values, values[1:])) and values[-1] == pytest.approx(0.0, abs=1e-12)
    twice = lr_schedule(replace(stage, steps=15_000), [change, {**change, "at_step": 8_000, "steps_before": 12_000,
                                                                "steps_after": 15_000}])
    assert twice(8_000) == pytest.approx(after(8_000)) and twice(15_000) == pytest.approx(0.0, abs=1e-12)
    assert twice(11_000) > after(11_000)  # the second change stretched what was left


@pytest.mark.parametrize("text", ["{broken", "[]", '{"stage": "unet"}', '{"stage": "unet", "step": 1, "config": {}}',
                                  json.dumps({"stage": "sideways", "step": 1, "config": PRESETS["test"].to_json()})])
def test_a_damaged_progress_record_is_refused_with_the_fix(tmp_path, text):
    checkpoint = tmp_path / "work" / "checkpoint"
    checkpoint.mkdir(parents=True)
    (checkpoint / "progress.json").write_text(text, encoding="utf-8")
    with pytest.raises(ClifError, match="start a new --work folder"):
        load_state(tmp_path / "work")
