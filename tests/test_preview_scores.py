"""Leakage previews read by the sandbox oracle: a column is right when the oracle recognises exactly the
characters its prompt asks for; on the sandbox model with character-named concepts the training stages
write what it read under the grid and into previews/oracle.csv, step by step; elsewhere nothing changes."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

import clif_core.models.bundled as bundled
import clif_core.sandbox.characters as characters_module
from clif_core.progress import Reporter
from clif_core.sandbox.characters import load_characters, parse_characters, render_character_images
from clif_core.sandbox.oracle import DEFAULT_WEIGHTS, Oracle
from clif_core.sandbox.preview_scores import OracleScorer, oracle_scorer
from clif_core.train.contrastive import ContrastiveConfig, train_contrastive
from clif_core.train.decoder import train_decoder
from clif_core.training.loop import LoopConfig
from tests.helpers.train_configs import stage2_config

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no sandbox oracle weights in this checkout")]
QUIET = Reporter(log=lambda m: None)


def test_a_column_is_right_when_the_oracle_sees_exactly_the_asked_characters():
    shipped = load_characters()
    a, b = shipped.pairs[0]
    picture_of_a = Image.fromarray(render_character_images(shipped[a], n=1, seed=0)[0].image)
    scorer = OracleScorer(Oracle.load(), shipped, {"<x>": a, "<y>": b})
    alone, leaked, together = scorer(
        [("<x> alone", "a photo of <x>"), ("<y> alone", "a photo of <y>"), ("both", "<x> and <y> together")],
        [picture_of_a] * 3)
    assert (alone.expected, alone.recognised, alone.correct) == ((a,), (a,), True)
    assert (leaked.expected, leaked.recognised, leaked.correct) == ((b,), (a,), False)  # b asked, a drawn: leakage
    assert (together.expected, together.recognised, together.correct) == ((a, b), (a,), False)  # b missing
    assert leaked.describe() == f"<y> alone: reads {a} (wrong)"


SPEC = {"format": "clif-sandbox-characters", "version": 1, "pairs": [["alice", "bob"]], "characters": {
    "alice": {"head": {"shape": "round", "colour": "yellow"}, "body": {"shape": "boxy", "colour": "blue"}},
    "bob": {"head": {"shape": "round", "colour": "yellow"}, "body": {"shape": "boxy", "colour": "green"}}}}


@pytest.fixture
def as_the_sandbox_model(loaded_sd1, tmp_path, monkeypatch):
    """The tiny model stands in for the built-in sandbox model, and alice and bob are shipped characters."""
    record = tmp_path / "sandbox_model.json"
    record.write_text(json.dumps({"fingerprint": loaded_sd1.fingerprint}), encoding="utf-8")
    monkeypatch.setattr(bundled, "SANDBOX_RECORD", record)
    monkeypatch.setattr(characters_module, "load_characters", lambda path=None: parse_characters(SPEC))


def rows(run) -> list[dict]:
    with (run / "previews" / "oracle.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_stage2_previews_are_scored_step_by_step_on_the_sandbox_model(loaded_sd1, mix_dataset, tmp_path, monkeypatch,
                                                                      as_the_sandbox_model):
    run = tmp_path / "run"
    train_decoder(loaded_sd1, mix_dataset, run, stage2_config(steps=2, preview_every=1, preview_steps=2), reporter=QUIET)
    table = rows(run)
    assert [(r["step"], r["column"], r["expected"]) for r in table] == [
        (str(step), column, expected) for step in (1, 2)
        for column, expected in (("<alice> alone", "alice"), ("<bob> alone", "bob"), ("<alice> + <bob>", "alice bob"))]
    assert all(r["correct"] == str(int(set(r["recognised"].split()) == set(r["expected"].split()))) for r in table)
    with Image.open(run / "previews" / "step-000002.png") as scored:
        height = scored.height
    # resumed from its checkpoint at step 2 with more steps: the CSV keeps one set of rows per step
    train_decoder(loaded_sd1, mix_dataset, run, stage2_config(steps=3, preview_every=1, preview_steps=2, checkpoint_every=1),
                  reporter=QUIET)
    assert [r["step"] for r in rows(run)] == ["1"] * 3 + ["2"] * 3 + ["3"] * 3

    plain = tmp_path / "plain"  # another model than the sandbox one: no scoring, the grid as it always was
    other = tmp_path / "other_record.json"
    other.write_text(json.dumps({"fingerprint": "another model"}), encoding="utf-8")
    monkeypatch.setattr(bundled, "SANDBOX_RECORD", other)
    train_decoder(loaded_sd1, mix_dataset, plain, stage2_config(steps=2, preview_every=2, preview_steps=2), reporter=QUIET)
    assert sorted(p.name for p in (plain / "previews").iterdir()) == ["step-000002.png"]
    with Image.open(plain / "previews" / "step-000002.png") as unscored:
        assert unscored.height < height  # the scored grid carries the oracle's lines below the pictures


def test_stage1_previews_are_scored_too(loaded_sd1, tiny_sd1, mix_dataset, tmp_path, as_the_sandbox_model):
    config = ContrastiveConfig(holdout=0.0, preview_steps=2,
                               loop=LoopConfig(steps=2, batch_size=2, log_every=0, preview_every=2))
    train_contrastive(loaded_sd1, mix_dataset, tiny_sd1.vision_dir, tmp_path / "s1", config, QUIET)
    assert [(r["step"], r["expected"]) for r in rows(tmp_path / "s1")] == [("2", "alice"), ("2", "bob"),
                                                                          ("2", "alice bob")]


def test_only_the_sandbox_models_own_weights_are_scored(loaded_sd1, tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setattr(characters_module, "load_characters", lambda path=None: parse_characters(SPEC))
    assert oracle_scorer(loaded_sd1, ["<alice>", "<bob>"]) is None  # the real record's fingerprint is not this model's
    record = tmp_path / "sandbox_model.json"
    record.write_text(json.dumps({"fingerprint": loaded_sd1.fingerprint}), encoding="utf-8")
    monkeypatch.setattr(bundled, "SANDBOX_RECORD", record)
    assert oracle_scorer(loaded_sd1, ["<alice>", "<bob>"]) is not None
    assert oracle_scorer(loaded_sd1, ["<alice>", "<carol>"]) is None  # every concept must be a character
