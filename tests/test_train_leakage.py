"""Leakage previews while training: a grid of each concept alone and both together, at the asked steps, in
the run folder and on the reporter; drawn with the model being trained (stage 2's last cell is what the final
concept file samples), in eval mode, without changing the training run (stage 2 and stage 1), and without
loading the model again."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clif_core.cli import main as clif_main
from clif_core.concepts.files import load_concept_file
from clif_core.progress import Reporter
from clif_core.sample.config import SampleConfig
from clif_core.sample.sampler import sample
from clif_core.train import decoder
from clif_core.train.contrastive import ContrastiveConfig, train_contrastive
from clif_core.train.decoder import train_decoder
from clif_core.train.leakage import PreviewPrompt, leakage_prompts
from clif_core.training.loop import LoopConfig
from tests.helpers.train_configs import stage2_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUIET = Reporter(log=lambda m: None)


def record(kind: str, caption: str, *slots: tuple[str, str | None]) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, caption=caption, slots=[
        SimpleNamespace(source="concept" if token else "common", token=token, part=part) for token, part in slots])


def test_prompts_are_the_datasets_captions_of_each_concept_alone_and_all_together():
    records = [
        record("R", "<alice>'s head and a chef", ("<alice>", "head"), (None, None)),
        record("M", "<bob> and a chef", ("<bob>", None), (None, None)),
        record("single", "a photo of <bob>", ("<bob>", None)),
        record("G", "<alice> and a chef", ("<alice>", None), (None, None)),
        record("M", "<bob> on the left and <alice> on the right", ("<bob>", None), ("<alice>", None)),
    ]
    assert leakage_prompts(records, ["<alice>", "<bob>"]) == [
        PreviewPrompt("<alice> alone", "a photo of <alice>"),  # no single sample of alice: the class prompt
        PreviewPrompt("<bob> alone", "a photo of <bob>"),
        PreviewPrompt("<alice> + <bob>", "<bob> on the left and <alice> on the right"),
    ]
    assert leakage_prompts(records[:3], ["<alice>", "<bob>"])[-1].prompt == "a photo of <alice> and <bob>"
    assert leakage_prompts(records, ["<alice>", "<bob>"], "<alice> hugs <bob>")[-1].prompt == "<alice> hugs <bob>"
    assert leakage_prompts(records, ["<bob>"]) == [PreviewPrompt("<bob> alone", "a photo of <bob>")]


def cell(grid: Image.Image, column: int, size: int = 64) -> np.ndarray:
    """A grid cell (labelled_grid with one row: label width 3/4 of a cell, 2 px padding, two title lines)."""
    x, bottom = size * 3 // 4 + 2 + column * (size + 2), grid.height - 4  # the row's pad, then the sheet's
    return np.asarray(grid.crop((x, bottom - size, x + size, bottom)), dtype=np.int16)


def test_previews_appear_at_their_steps_show_the_trained_model_and_change_nothing(loaded_sd1, mix_dataset, tmp_path,
                                                                                monkeypatch):
    modes = []
    loss = decoder.DecoderTask.loss

    def spy(self, batch):
        if torch.is_grad_enabled():  # a training step (the fixed-batch loss before and after runs without)
            modes.append(self.base.unet.training and all(s.encoder.training for s in self.base.text))
        return loss(self, batch)

    monkeypatch.setattr(decoder.DecoderTask, "loss", spy)
    plain = train_decoder(loaded_sd1, mix_dataset, tmp_path / "plain", stage2_config(steps=4), reporter=QUIET)
    shown = []
    reporter = Reporter(progress=lambda s, t, p=None: shown.append((s, p)) if p is not None else None,
                        log=lambda m: None)
    config = stage2_config(steps=4, preview_every=2, preview_steps=2)
    previewed = train_decoder(loaded_sd1, mix_dataset, tmp_path / "previewed", config, reporter=reporter)

    assert previewed.train.history == plain.train.history  # the same losses, step by step
    a, b = load_concept_file(plain.path), load_concept_file(previewed.path)
    assert all(torch.equal(a.unet_lora[k], b.unet_lora[k]) for k in a.unet_lora)
    assert all(torch.equal(x.embeddings["clip_l"], y.embeddings["clip_l"]) for x, y in zip(a.concepts, b.concepts))
    assert all(modes) and len(modes) == 2 * 4  # train mode at every step, also after each preview
    assert not loaded_sd1.unet.training  # and back to eval mode afterwards

    run = tmp_path / "previewed" / "previews"
    assert sorted(p.name for p in run.iterdir()) == ["step-000002.png", "step-000004.png"]
    assert [s for s, _ in shown] == [2, 4]
    with Image.open(run / "step-000004.png") as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(shown[-1][1]))
    grid = shown[-1][1]
    assert grid.width == 48 + 3 * 66 + 2  # label, three 64 px cells: alice alone, bob alone, both together
    alice, bob, both = (cell(grid, c) for c in range(3))
    assert np.abs(alice - bob).mean() > 1  # the prompt is the only difference between columns
    assert not np.array_equal(cell(shown[0][1], 2), both)  # step 2 and step 4 differ: training shows

    # the last cell is the final model: the concept file sampled with the pack's sampler, same seed and steps
    prompt = b.metadata["stage2"]["preview_prompts"][-1]
    assert prompt == "a photo of <alice> on the left and <bob> on the right"
    final = sample(loaded_sd1, SampleConfig(prompt=prompt, steps=2, seed=0), [b]).images[0]
    assert np.abs(np.asarray(final, dtype=np.int16) - both).max() <= 2
    assert b.thumbnail is not None


def test_clif_train_previews_load_the_model_once(tiny_sd1, mix_dataset, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from clif_core.models import loader

    loads, unets = [], []
    load = loader.load_base_model
    unet_init = UNet2DConditionModel.__init__
    monkeypatch.setattr(loader, "load_base_model", lambda *a, **k: loads.append(a) or load(*a, **k))

    @functools.wraps(unet_init)  # diffusers reads the signature to pick the config's arguments
    def counted_init(self, *a, **k):
        unets.append(1)
        unet_init(self, *a, **k)

    monkeypatch.setattr(UNet2DConditionModel, "__init__", counted_init)
    args = ["train", "stage2", "--dataset", str(mix_dataset), "--base", str(tiny_sd1.single_file), "--run-dir",
            str(tmp_path / "run"), "--steps", "2", "--batch-size", "2", "--lora-rank", "2", "--preview-every", "1",
            "--preview-steps", "2", "--log-every", "0"]
    assert clif_main(args) == 0
    assert len(loads) == 1 and len(unets) == 1  # previews sample with the UNet being trained
    assert sorted(p.name for p in (tmp_path / "run" / "previews").iterdir()) == ["step-000001.png",
                                                                                 "step-000002.png"]


def test_stage1_previews_show_its_tokens_and_change_nothing(tiny_sd1, loaded_sd1, mix_dataset, tmp_path):
    def config(every: int) -> ContrastiveConfig:
        return ContrastiveConfig(holdout=0.0, preview_steps=2,
                                 loop=LoopConfig(steps=2, batch_size=2, log_every=0, preview_every=every))

    plain = train_contrastive(loaded_sd1, mix_dataset, tiny_sd1.vision_dir, tmp_path / "plain", config(0), QUIET)
    previewed = train_contrastive(loaded_sd1, mix_dataset, tiny_sd1.vision_dir, tmp_path / "previewed", config(1), QUIET)
    assert previewed.train.history == plain.train.history
    for x, y in zip(plain.file.concepts, previewed.file.concepts):
        assert torch.equal(x.embeddings["clip_l"], y.embeddings["clip_l"])
    previews = tmp_path / "previewed" / "previews"
    assert sorted(p.name for p in previews.iterdir()) == ["step-000001.png", "step-000002.png"]
    with Image.open(previews / "step-000002.png") as grid:
        assert grid.width == 48 + 3 * 66 + 2

    # the preview settings do not change what is trained: a resumed run may change them
    more = ContrastiveConfig(holdout=0.0, preview_steps=0, loop=LoopConfig(steps=3, batch_size=2, log_every=0))
    resumed = train_contrastive(loaded_sd1, mix_dataset, tiny_sd1.vision_dir, tmp_path / "previewed", more, QUIET)
    assert resumed.train.resumed_from == 2 and len(resumed.train.history) == 3
