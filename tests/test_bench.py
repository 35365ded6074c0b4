"""The sandbox benchmarks end to end at their test size, on a miniature pretrained model and a character
spec the shipped files do not contain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clif_core.bench import efficacy, erasure
from clif_core.bench.stats import bootstrap
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


def _table_rows(markdown: str) -> dict[str, list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return {"__header__": header[1:], **rows}


def test_efficacy_smoke_table_has_every_method_and_metric(setup: dict[str, Path]) -> None:
    out = setup["root"] / "efficacy"
    config = efficacy.EfficacyConfig(out=out, size="test", spec=setup["spec"], model=setup["model"],
                                     vision=setup["vision"])
    paths = efficacy.run_efficacy(config)
    rows = _table_rows(paths["table"].read_text(encoding="utf-8"))
    assert rows.pop("__header__") == [title for _, title in efficacy.METRICS]
    assert sorted(rows) == sorted(efficacy.METHOD_TITLES[m] for m in efficacy.METHODS)
    for cells in rows.values():
        assert len(cells) == len(efficacy.METRICS)
        for cell in cells:  # every metric applies to some prompt, so every cell is an interval
            assert cell != "n/a" and cell.count("[") == 1 and cell.endswith("]"), cell
    assert paths["grid"].is_file() and paths["grid"].stat().st_size > 0
    record = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert record["pairs"][0]["pair"] == ["zed", "yuk"]  # the never-seen spec's characters were used
    assert set(record["table"]) == set(efficacy.METHODS)


def test_erase_smoke_table_has_every_method_and_metric(setup: dict[str, Path]) -> None:
    out = setup["root"] / "erase"
    config = erasure.EraseBenchConfig(out=out, size="test", spec=setup["spec"], model=setup["model"],
                                      targets="shape:circle->square,colour:red,character:zed")
    paths = erasure.run_erasure_bench(config)
    rows = _table_rows(paths["table"].read_text(encoding="utf-8"))
    assert rows.pop("__header__") == [title for _, title in erasure.METRICS]
    models = ("original", *erasure.METHODS)
    labels = ["shape circle -> square", "colour red", "character zed"]
    assert sorted(rows) == sorted(f"{t}: {erasure.METHOD_TITLES[m]}" for t in labels for m in models)
    keys = [k for k, _ in erasure.METRICS]
    for name, cells in rows.items():
        for key, cell in zip(keys, cells):
            applies = not (key == "alternative" and not name.startswith("shape")) and not (
                key.startswith("drift") and name.endswith(erasure.METHOD_TITLES["original"]))
            assert (cell.count("[") == 1) == applies, (name, key, cell)
    assert paths["grid"].is_file() and paths["grid"].stat().st_size > 0


def test_cli_options_and_bad_input() -> None:
    args = build_parser().parse_args(["bench", "efficacy", "--size", "full", "--pairs", "ada/ida,bo/bea",
                                      "--seeds", "16", "--out", "x", "--spec", "s.json"])
    assert args.size == "full" and args.pairs == "ada/ida,bo/bea" and args.seeds == 16
    args = build_parser().parse_args(["bench", "erase", "--targets", "colour:red"])
    assert args.targets == "colour:red" and args.size == "smoke"
    from clif_core.bench.setup import parse_pairs
    from clif_core.sandbox.characters import load_characters

    assert parse_pairs("ada/ida, bo/bea") == [("ada", "ida"), ("bo", "bea")]
    with pytest.raises(ClifError, match="joined by '/'"):
        parse_pairs("ada-ida")
    with pytest.raises(ClifError, match="not a shape"):
        erasure.parse_targets("shape:blob", load_characters())


def test_bootstrap_interval() -> None:
    est = bootstrap([0.0, 1.0] * 50)
    assert est.mean == 0.5 and est.lo < 0.5 < est.hi and est.n == 100
    assert bootstrap([float("nan")]).format() == "n/a"
    assert bootstrap([1.0, 1.0, float("nan")]).format() == "1.00 [1.00, 1.00]"
