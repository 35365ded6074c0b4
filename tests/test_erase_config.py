"""Erasure settings: target parsing and the bad inputs the issue lists, each refused with a clear message."""

from __future__ import annotations

import pytest

from clif_core.erase.config import EraseConfig, EraseTarget, check_targets, parse_targets, unknown_target_warnings
from clif_core.errors import ClifError


def test_parse_targets_reads_alternatives_and_skips_blank_and_comment_lines():
    text = "van gogh\n\n  pig ->  cow \n# a note\nthe eiffel tower->a radio mast"
    assert parse_targets(text) == [
        EraseTarget("van gogh"), EraseTarget("pig", "cow"), EraseTarget("the eiffel tower", "a radio mast")]
    assert parse_targets(["pig -> cow"]) == [EraseTarget("pig", "cow")]
    with pytest.raises(ClifError, match="two '->'"):
        parse_targets("pig -> cow -> sheep")


@pytest.mark.parametrize("targets, preserve, message", [
    ([], [], "nothing to erase"),
    ([EraseTarget("   ")], [], "target 1 is empty"),
    ([EraseTarget("pig", "  ")], [], "empty alternative"),
    ([EraseTarget("Van  Gogh", "van gogh")], [], "names itself as its alternative"),
    ([EraseTarget("pig"), EraseTarget("PIG")], [], "repeats target 1"),
    ([EraseTarget("pig")], ["a pig on a farm"], "contains the target 'pig'"),
    ([EraseTarget("van gogh")], ["A painting by Van Gogh."], "preserve prompt 1"),
    ([EraseTarget("pig")], [""], "preserve prompt 1 is empty"),
])
def test_bad_targets_are_refused_with_the_entry_named(targets, preserve, message):
    with pytest.raises(ClifError, match=message):
        check_targets(targets, preserve)


def test_preserve_prompt_with_the_target_inside_another_word_is_fine():
    check_targets([EraseTarget("pig")], ["a guinea pigeon", "piggy bank"])


@pytest.mark.parametrize("change, message", [
    ({"method": "ablation"}, "erase method"),
    ({"params": "everything"}, "erase params"),
    ({"method": "esd-x", "params": "lora"}, "use method 'esd'"),
    ({"eta": -1}, "eta"),
    ({"trajectories": 0}, "trajectories"),
    ({"sample_steps": 1}, "sample_steps"),
    ({"patch_tolerance": 1.0}, "patch_tolerance"),
])
def test_bad_settings_are_refused(change, message):
    config = EraseConfig(targets=[EraseTarget("pig")], **change)
    with pytest.raises(ClifError, match=message):
        config.check()


def test_method_picks_objective_subset_and_learning_rate():
    abo = EraseConfig(targets=[EraseTarget("pig")])
    assert (abo.objective, abo.subset, abo.learning_rate) == ("all-but-one", "lora", 1e-4)
    esd_u = EraseConfig(targets=[EraseTarget("pig")], method="esd-u")
    assert (esd_u.objective, esd_u.subset, esd_u.learning_rate) == ("esd", "non-xattn", 1e-5)
    esd_kv = EraseConfig(targets=[EraseTarget("pig")], method="esd", params="kv", lr=3e-4)
    assert (esd_kv.objective, esd_kv.subset, esd_kv.learning_rate) == ("esd", "kv", 3e-4)


def test_target_made_only_of_unknown_tokens_warns(tiny_sd1):
    from clif_core.models.loader import load_base_model

    base = load_base_model(tiny_sd1.diffusers_dir, device="cpu")
    [warning] = unknown_target_warnings(base, [EraseTarget("<alice>"), EraseTarget("a pig"),
                                               EraseTarget("<alice> cat")])
    assert "'<alice>'" in warning and "nothing the model knows" in warning
