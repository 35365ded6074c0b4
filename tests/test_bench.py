"""The sandbox benchmarks end to end at their test size, on a miniature pretrained model and a character
spec the shipped files do not contain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clif_core.bench import efficacy, erase_targets, erasure, recovery, robustness
from clif_core.bench.stats import bootstrap, bootstrap_runs
from clif_core.cli import build_parser, main
from clif_core.errors import ClifError
from clif_core.sandbox.oracle import DEFAULT_WEIGHTS

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no sandbox oracle weights in this checkout")

NEW_SPEC = {
    "format": "clif-sandbox-characters", "version": 1,
    "characters": {
        "zed": {"head": {"shape": "pointy", "colour": "purple", "texture": "striped"},
                "body": {"shape": "round", "colour": "cyan"},
                "accessory": {"kind": "crown", "colour": "orange"},
                "detail": {"kind": "eyes", "colour": "white"}},
        "yuk": {"head": {"shape": "pointy", "colour": "purple", "texture": "striped"},
                "body": {"shape": "round", "colour": "pink"},
                "accessory": {"kind": "crown", "colour": "green"},
                "detail": {"kind": "eyes", "colour": "black"}},
    },
    "pairs": [["zed", "yuk"]],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench")
    assert main(["sandbox", "pretrain", "--preset", "test", "--work", str(root / "pt"), "--export",
                 str(root / "model"), "--threads", "1"]) == 0
    spec = root / "new_characters.json"
    spec.write_text(json.dumps(NEW_SPEC), encoding="utf-8")
    return {"root": root, "model": root / "model" / "diffusers", "vision": root / "model" / "vision", "spec": spec}


def _tables(markdown: str) -> list[dict[str, list[str]]]:
    """Every markdown table of a report: row label → cells, with the column titles under "__header__"."""
    tables, lines = [], markdown.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("|") and (k == 0 or not lines[k - 1].startswith("|")):
            end = k
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            block = lines[k:end]
            header = [c.strip() for c in block[0].strip("|").split("|")]
            rows = {c[0]: c[1:] for c in ([x.strip() for x in b.strip("|").split("|")] for b in block[2:])}
            tables.append({"__header__": header[1:], **rows})
    return tables


def _table_rows(markdown: str) -> dict[str, list[str]]:
    return _tables(markdown)[0]


def test_efficacy_smoke_table_has_every_method_and_metric(setup: dict[str, Path]) -> None:
    out = setup["root"] / "efficacy"
    config = efficacy.EfficacyConfig(out=out, size="test", spec=setup["spec"], model=setup["model"],
                                     vision=setup["vision"])
    paths = efficacy.run_efficacy(config)
    rows = _table_rows(paths["table"].read_text(encoding="utf-8"))
    assert rows.pop("__header__") == [title for _, title in efficacy.METRICS]
    assert sorted(rows) == sorted(efficacy.METHOD_TITLES[m] for m in efficacy.METHODS)
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    titles = {title: method for method, title in efficacy.METHOD_TITLES.items()}
    for title, cells in rows.items():
        assert len(cells) == len(efficacy.METRICS)
        for (metric, _), cell in zip(efficacy.METRICS, cells):
            n = record["table"][titles[title]][metric]["n"]
            if metric == "leakage" and n == 0:  # counted only where a concept slot holds a figure: the
                assert cell == "n/a"  # smoke model's blobs may hold none, and the table must say so
            else:  # identity, attendance and fidelity apply to every prompt of their kind
                assert n > 0 and cell.count("[") == 1 and cell.endswith("]"), (title, metric, cell)
    assert paths["grid"].is_file() and paths["grid"].stat().st_size > 0
    assert record["pairs"][0]["pair"] == ["zed", "yuk"]  # the never-seen spec's characters were used
    assert set(record["table"]) == set(efficacy.METHODS)
    # stage 1's diagnostics: the tower's separation of the pair and each stage-1 run's own measures
    pair = record["pairs"][0]
    assert 0.0 <= pair["tower_separation"] <= 1.0
    # (a file per character has no pair of concepts for stage 1 to measure)
    with_stage1 = {m for m in efficacy.METHODS if efficacy._PLAN[m][1] == "clif" and m not in efficacy.ISOLATED}
    assert set(pair["stage1"]) == with_stage1 and all(len(runs) == config.runs_of(m) for m, runs in pair["stage1"].items())
    assert all(r["cosine_before"] > 0.99 for runs in pair["stage1"].values() for r in runs)  # both start as "figure"
    diagnostics = _tables(paths["table"].read_text(encoding="utf-8"))[1]
    assert diagnostics["__header__"] == ["tower separation", "method", "concept cosine before → after",
                                         "retrieval after"]


def test_erase_smoke_tables_have_every_method_metric_family_and_attack(setup: dict[str, Path]) -> None:
    out = setup["root"] / "erase"
    config = erasure.EraseBenchConfig(out=out, size="test", spec=setup["spec"], model=setup["model"],
                                      vision=setup["vision"],
                                      targets="shape:circle->square,colour:red,character:zed,colour:red+character:zed")
    paths = erasure.run_erasure_bench(config)
    text = paths["table"].read_text(encoding="utf-8")
    main_rows, family_rows, recovery_rows = _tables(text)
    assert main_rows.pop("__header__") == [title for _, title in erasure.METRICS]
    models = ("original", *erasure.METHODS)
    labels = ["shape circle -> square", "colour red", "character zed", "colour red [2 in one run]",
              "character zed [2 in one run]"]
    assert sorted(main_rows) == sorted(f"{t}: {erasure.METHOD_TITLES[m]}" for t in labels for m in models)
    keys = [k for k, _ in erasure.METRICS]
    for name, cells in main_rows.items():
        for key, cell in zip(keys, cells):
            applies = not (key == "alternative" and not name.startswith("shape")) and not (
                "drift" in key and name.endswith(erasure.METHOD_TITLES["original"]))
            assert (cell.count("[") == 1) == applies, (name, key, cell)
    # robustness (a): every family for every target and model, except attributes-without-name for a shape or
    # a colour (the world has no words for them besides their names)
    assert family_rows.pop("__header__")[1:] == [title for _, title in robustness.FAMILIES]
    assert sorted(family_rows) == sorted(main_rows)
    for name, cells in family_rows.items():
        unnamed_applies = name.startswith("character")
        assert all(c.count("[") == 1 for c in cells[:3]), (name, cells)
        assert (cells[3].count("[") == 1) == unnamed_applies, (name, cells)
    # robustness (b): the first target (the size's recovery_targets 1) under both attacks; textual inversion
    # also on the original model, CLIF training on the erased models only
    assert recovery_rows.pop("__header__") == [erasure.METHOD_TITLES[m] for m in models]
    assert sorted(recovery_rows) == sorted(f"shape circle -> square: {t}" for _, t in recovery.ATTACKS)
    assert all(c.count("[") == 1 for c in recovery_rows["shape circle -> square: textual inversion"])
    clif_row = recovery_rows["shape circle -> square: CLIF training (stage 1 + 2)"]
    assert clif_row[0] == "n/a" and all(c.count("[") == 1 for c in clif_row[1:])
    assert "Model fingerprint: `" in text and "Wall time:" in text and "Command: `" in text
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    joint = record["runs"][3]
    assert [t["value"] for t in joint["targets"]] == ["red", "zed"]
    for method in erasure.METHODS:  # one erasure run per method for the two joint targets, scored per target
        assert (config.work or out / "work-erase-test").joinpath("colour-red+character-zed", f"{method}.safetensors").is_file()
        per_target = joint["scores"][method]
        assert len(per_target) == 2 and per_target[0]["other_attributes"] == per_target[1]["other_attributes"]
        assert len(per_target[0]["uncond_drift_pixels"]) == erasure.SIZES["test"].other_prompts
    assert paths["grid"].is_file() and paths["grid"].stat().st_size > 0


def test_prompt_families_reach_the_target_another_way() -> None:
    from clif_core.sandbox.characters import load_characters
    from clif_core.sandbox.scene import caption

    characters = load_characters()
    circle, ada = erase_targets.Target("shape", "circle"), erase_targets.Target("character", "ada")
    description = characters["ada"].description
    reordered = robustness.family_prompts(circle, "reordered", 4, [circle], characters)
    assert all("circle" in p for p in reordered)
    base = [caption(s, background=False) for s in erase_targets.target_scenes(circle, 4, characters)]
    assert all(p != b and sorted(p.replace(",", "").split()) == sorted(b.split()) for p, b in zip(reordered, base))
    two = robustness.family_prompts(circle, "two_objects", 4, [circle], characters)
    assert all(p.count(" on the ") == 2 and p.count("circle") == 1 for p in two)
    assert two[0].split(" on the ")[0].endswith("circle") and not two[1].split(" on the ")[0].endswith("circle")
    assert robustness.family_prompts(circle, "unnamed", 4, [circle], characters) == []
    unnamed = robustness.family_prompts(ada, "unnamed", 3, [ada], characters)
    assert unnamed == [description.removeprefix("a figure with ")] * 3 and "figure" not in unnamed[0]
    [flipped] = robustness.family_prompts(ada, "reordered", 1, [ada], characters)
    parts = description.removeprefix("a figure with ").replace(" and ", ", ").split(", ")
    assert flipped == "a figure with " + ", ".join(parts[::-1][:-1]) + " and " + parts[0]


def test_recovery_pictures_show_the_target() -> None:
    from clif_core.sandbox.characters import load_characters
    from clif_core.sandbox.oracle import Oracle

    characters = load_characters()
    oracle = Oracle.load()
    for target in (erase_targets.Target("shape", "star"), erase_targets.Target("colour", "green"),
                   erase_targets.Target("character", "ada")):
        concept = recovery.target_pictures(target, 5, 0, characters)
        assert len(concept.images) == 5 and concept.token == recovery.TOKEN
        images = np.stack([np.asarray(im) for im in concept.images])
        assert np.mean(erase_targets.produced(target, target.value, images, oracle, characters)) >= 0.8, target
    words = recovery.common_words([erase_targets.Target("shape", "circle"), erase_targets.Target("colour", "red")], characters)
    assert len(words) == 2 and not any("circle" in w or "red" in w for w in words)


def test_efficacy_core_methods_train_with_every_training_seed(setup: dict[str, Path]) -> None:
    out = setup["root"] / "efficacy-seeds"
    config = efficacy.EfficacyConfig(out=out, size="test", spec=setup["spec"], model=setup["model"],
                                     vision=setup["vision"], methods=("textual-inversion", "decoder-plain"),
                                     train_seeds=2, work=setup["root"] / "efficacy-seeds-work")
    paths = efficacy.run_efficacy(config)
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["training_runs"] == {"textual-inversion": 1, "decoder-plain": 2}
    scores = record["pairs"][0]["scores"]
    assert len(scores["textual-inversion"]) == 1 and len(scores["decoder-plain"]) == 2
    pair_dir = config.work / "pairs" / "zed-yuk"
    for k in range(2):  # each training run has its own folder and its own seed
        recipe = json.loads((efficacy.run_dir_of(pair_dir, "decoder-plain", k) / "run.json").read_text())
        assert recipe["recipe"]["config"]["loop"]["seed"] == k
    assert not efficacy.run_dir_of(pair_dir, "textual-inversion", 1).exists()
    assert "Training runs per pair: 2" in paths["table"].read_text(encoding="utf-8")


def test_cli_options_and_bad_input() -> None:
    args = build_parser().parse_args(["bench", "efficacy", "--size", "full", "--pairs", "ada/ida,bo/bea",
                                      "--seeds", "16", "--out", "x", "--spec", "s.json"])
    assert args.size == "full" and args.pairs == "ada/ida,bo/bea" and args.seeds == 16 and args.train_seeds == 0
    assert build_parser().parse_args(["bench", "efficacy", "--train-seeds", "3"]).train_seeds == 3
    assert efficacy.EfficacyConfig(out=Path("x"), size="full").runs_of("clif") == 3
    assert efficacy.EfficacyConfig(out=Path("x"), size="smoke").runs_of("clif") == 1
    assert efficacy.EfficacyConfig(out=Path("x"), size="full").runs_of("clif-no-mix") == 1
    with pytest.raises(ClifError, match="train_seeds"):
        efficacy.EfficacyConfig(out=Path("x"), train_seeds=-1).check()
    args = build_parser().parse_args(["bench", "erase", "--targets", "colour:red"])
    assert args.targets == "colour:red" and args.size == "smoke"
    from clif_core.bench.setup import parse_pairs
    from clif_core.sandbox.characters import load_characters

    assert parse_pairs("ada/ida, bo/bea") == [("ada", "ida"), ("bo", "bea")]
    with pytest.raises(ClifError, match="joined by '/'"):
        parse_pairs("ada-ida")
    with pytest.raises(ClifError, match="not a shape"):
        erase_targets.parse_targets("shape:blob", load_characters())
    runs = erase_targets.parse_targets(erasure.DEFAULT_TARGETS, load_characters())
    assert [len(r.targets) for r in runs] == [1, 1, 1, 3]
    assert runs[3].targets == tuple(t for r in runs[:3] for t in r.targets)  # the same three, erased at once
    with pytest.raises(ClifError, match="twice"):
        erase_targets.parse_targets("colour:red+colour:red", load_characters())
    assert erasure.parse_budget("40x4") == (40, 4) and erasure.parse_budget("") == (0, 0)
    with pytest.raises(ClifError, match="STEPSxBATCH"):
        erasure.parse_budget("40")
    args = build_parser().parse_args(["bench", "erase", "--recovery-budget", "10x2", "--recovery-targets", "0"])
    assert args.recovery_budget == "10x2" and args.recovery_targets == 0
    dims = erasure.EraseBenchConfig(out=Path("x"), recovery_steps=10, recovery_batch=2, recovery_targets=0).dims
    assert (dims.recovery_steps, dims.recovery_batch, dims.recovery_targets) == (10, 2, 0)


def test_bootstrap_interval() -> None:
    est = bootstrap([0.0, 1.0] * 50)
    assert est.mean == 0.5 and est.lo < 0.5 < est.hi and est.n == 100
    assert bootstrap([float("nan")]).format() == "n/a"
    assert bootstrap([1.0, 1.0, float("nan")]).format() == "1.00 [1.00, 1.00]"


def test_two_level_bootstrap_covers_run_to_run_variation() -> None:
    # two training runs that disagree completely, many images each: the image-level bootstrap over the pooled
    # images is narrow, the run-level one spans (almost) both runs' means
    runs = [[0.0] * 50, [1.0] * 50]
    pooled = bootstrap([v for run in runs for v in run])
    nested = bootstrap_runs([runs])
    assert nested.mean == pooled.mean == 0.5 and nested.n == 100
    assert nested.hi - nested.lo > 0.9 and pooled.hi - pooled.lo < 0.3
    # one run per stratum: only images are resampled, strata are kept (each pair contributes its own run)
    single = bootstrap_runs([[[0.0, 1.0] * 25], [[1.0] * 50]])
    assert single.mean == 0.75 and 0.6 < single.lo < 0.75 < single.hi < 0.9
    assert bootstrap_runs([[[float("nan")]], []]).format() == "n/a"
    assert bootstrap_runs([[[1.0, float("nan")], [float("nan")]]]).format() == "1.00 [1.00, 1.00]"


def test_isolated_rows_sample_each_characters_file_only_in_its_half() -> None:
    config = efficacy.EfficacyConfig(out=Path("x"), size="test")
    prompts = efficacy.pair_prompts("zed", "yuk", efficacy.sandbox_templates(), "red circle")
    files = {"zed": object(), "yuk": object()}  # stand-ins: only their identity matters here
    sample_config, uses = efficacy._sampling(prompts[1], files, config, seeds=2)  # yuk left, zed right
    assert "<" not in sample_config.prompt  # isolated placeholders only in their regions' prompts
    assert [(r.prompt, r.box) for r in sample_config.regions] == [("<yuk>", (0.0, 0.0, 0.5, 1.0)),
                                                                 ("<zed>", (0.5, 0.0, 1.0, 1.0))]
    assert [(u.file, u.region) for u in uses] == [(files["yuk"], 1), (files["zed"], 2)]
    single, uses = efficacy._sampling(prompts[2], files, config, seeds=2)
    assert single.regions == () and [(u.file, u.region) for u in uses] == [(files["zed"], None)]
    common, uses = efficacy._sampling(prompts[4], files, config, seeds=2)
    assert [r.prompt for r in common.regions] == ["<zed>", "a red circle"] and [u.region for u in uses] == [1]
    joint = {None: object()}
    plain, uses = efficacy._sampling(prompts[0], joint, config, seeds=2)
    assert plain.prompt == prompts[0].text and plain.regions == () and uses[0].file is joint[None]
