"""One source of truth for every setting (clif_core/options.py): each `clif` flag and each node widget that sets
a field of a settings dataclass has that field's default, limits and choices, and every node input has a
tooltip. The expected values are read from the dataclasses themselves (their fields' metadata and a default
instance), never written here."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clif_core.augment.compose import AugmentConfig
from clif_core.cli import build_parser
from clif_core.erase.config import EraseConfig, parse_targets
from clif_core.options import option_of
from clif_core.sample.config import Region, SampleConfig
from clif_core.train.contrastive import ContrastiveConfig
from clif_core.train.decoder import DecoderConfig
from clif_core.training.loop import LoopConfig

PROBE = Path(__file__).parent / "comfyui" / "schema_probe.py"

DEFAULTS = {
    "loop": LoopConfig(), "stage1": ContrastiveConfig(), "stage2": DecoderConfig(), "erase": EraseConfig(targets=[]),
    "augment": AugmentConfig(), "sample": SampleConfig(prompt=""), "region": Region(prompt="", box=(0, 0, 1, 1)),
}
"""A default instance of the dataclass behind each option table (tagged on flags and widgets by its name)."""


def expected(table: str, path: str):
    """(the dataclass's default value, the Option its field declares) of setting `path` of `table`."""
    instance = DEFAULTS[table]
    value = instance
    for part in path.split("."):
        value = getattr(value, part)
    option = option_of(type(instance), path)
    assert option.default == value, f"{table}.{path}: the field's default and its option's disagree"
    return value, option


def shown(value, option):
    """A default as a flag or a widget holds it (a tuple as comma-separated text)."""
    return ",".join(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------------------------------- CLI


def _actions(parser: argparse.ArgumentParser, where: str = "clif"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{where} {name}")
        else:
            yield where, action


def test_every_cli_flag_of_a_setting_has_the_dataclass_default_limits_and_choices():
    checked = 0
    for where, action in _actions(build_parser()):
        tag = getattr(action, "clif_option", None)
        if tag is None:
            continue
        value, option = expected(*tag)
        flag = f"{where} {action.option_strings[0]}"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert action.const == (not value), f"{flag} does not switch {tag} away from its default"
        if action.default is None and where == "clif train both" and tag[1].startswith("loop."):
            pass  # a flag shared by both stages: left out, each stage keeps its own default (checked below)
        else:
            assert action.default == (shown(value, option) if value is not None else None), flag
        if option.choices:
            assert list(action.choices) == list(option.choices), flag
        if option.type in (int, float) and not option.choices:
            assert (action.type.low, action.type.high) == (option.min, option.max), flag
        checked += 1
    assert checked >= 60, checked  # every command's settings flags are tagged


def test_settings_flags_are_all_tagged():
    """A flag whose destination is a field of the command's settings must come from the option tables."""
    fields = {"clif train stage1": ContrastiveConfig, "clif train stage2": DecoderConfig, "clif erase": EraseConfig,
              "clif sample": SampleConfig, "clif augment": AugmentConfig}
    for where, action in _actions(build_parser()):
        cls = fields.get(where)
        if cls is None or not action.option_strings or action.dest == "help":
            continue
        names = {*cls.__dataclass_fields__, *LoopConfig.__dataclass_fields__} - {"prompt", "targets", "preserve"}
        if action.dest in names:
            assert getattr(action, "clif_option", None), f"{where} {action.option_strings[0]} is not from a table"


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_clif_train_left_at_its_defaults_trains_as_the_dataclasses_say():
    from clif_core.train.cli import stage_configs

    common = ["--dataset", "d", "--base", "b", "--run-dir", "r"]
    assert stage_configs(_parse("train", "stage1", *common, "--vision", "v")) == [ContrastiveConfig()]
    assert stage_configs(_parse("train", "stage2", *common)) == [DecoderConfig()]
    assert stage_configs(_parse("train", "both", *common, "--vision", "v")) == [ContrastiveConfig(), DecoderConfig()]
    s1, s2 = stage_configs(_parse("train", "both", *common, "--vision", "v", "--checkpoint-every", "7"))
    assert s1.loop.checkpoint_every == s2.loop.checkpoint_every == 7  # a shared flag, when given, sets both


def test_clif_erase_left_at_its_defaults_erases_as_the_dataclass_says():
    from clif_core.erase.cli import erase_config

    args = _parse("erase", "--base", "b", "--out", "o.safetensors", "--target", "pig -> cow")
    assert erase_config(args) == EraseConfig(targets=parse_targets(["pig -> cow"]))


# ------------------------------------------------------------------------------------------------- nodes


@pytest.fixture(scope="module")
def schemas() -> dict:
    """Every pack node's inputs as ComfyUI builds them (tests/comfyui/schema_probe.py in ComfyUI's environment)."""
    from tests.comfyui.rig import comfy_subprocess_env, ensure_comfyui

    done = subprocess.run([sys.executable, str(PROBE)], cwd=ensure_comfyui(), env=comfy_subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"schema probe failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_node_input_has_a_tooltip(schemas):
    missing = [f"{node}.{i['id']}" for node, inputs in schemas.items() for i in inputs
               if not str(i["tooltip"] or "").strip()]
    assert not missing, f"inputs without a tooltip: {', '.join(missing)}"


def test_every_node_widget_of_a_setting_has_the_dataclass_default_limits_and_choices(schemas):
    checked = 0
    for node, inputs in schemas.items():
        for i in inputs:
            if not i["clif_option"]:
                continue
            value, option = expected(*i["clif_option"])
            where = f"{node}.{i['id']} ({'.'.join(i['clif_option'])})"
            assert i["default"] == (shown(value, option) if value is not None else option.widget_default), where
            if option.choices:
                assert i["options"] == list(option.choices), where
            if option.type in (int, float) and not option.choices:
                assert (i["min"], i["max"]) == (option.min, option.max), where
            checked += 1
    assert checked >= 60, checked


def test_the_sampler_cli_and_node_share_their_settings(schemas):
    """The same setting reached from the CLI and a node: the three front ends name one option."""
    node = {tuple(i["clif_option"]) for i in schemas["CLIFSampler"] if i["clif_option"]}
    cli = {getattr(a, "clif_option", None) for w, a in _actions(build_parser()) if w == "clif sample"}
    assert {("sample", p) for p in ("seed", "steps", "cfg", "scheduler", "width", "height", "batch")} <= node & cli
