"""Training data: the tiny augmented datasets the training tests use, the hard-negative batch order and the
held-out split."""

from __future__ import annotations

from collections import Counter

import pytest

from clif_core.augment.dataset import load_dataset
from clif_core.errors import ClifError
from clif_core.train import data
from tests.helpers.datasets import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_dataset(tmp_path_factory.mktemp("ds") / "alice_bob"))


def test_dataset_concepts_and_fingerprint(dataset):
    assert data.dataset_concepts(dataset) == [("alice", "<alice>", "person"), ("bob", "<bob>", "person")]
    assert len(data.dataset_fingerprint(dataset)) == 16


def test_hard_negative_batches_keep_groups_and_kinds_together(dataset):
    records = dataset.records
    indices = list(range(len(records)))
    order = data.hard_negative_order(records, indices, epoch=0, seed=3, batch_size=4)
    assert sorted(order) == indices  # every sample exactly once
    assert order == data.hard_negative_order(records, indices, epoch=0, seed=3, batch_size=4)
    assert order != data.hard_negative_order(records, indices, epoch=1, seed=3, batch_size=4)
    batches = [order[i : i + 4] for i in range(0, len(order) - 3, 4)]
    # Both slot orders of a composition (its group) land in the same batch ...
    for batch in batches:
        groups = Counter(records[i].group for i in batch)
        for group, n in groups.items():
            assert n == sum(1 for r in records if r.group == group), "a group was split across batches"
    # ... and most batches hold one kind only (Region parts of both concepts together, Mix pairs together).
    single_kind = sum(len({records[i].kind for i in b}) == 1 for b in batches)
    assert single_kind >= len(batches) - 2
    mix = [b for b in batches if {records[i].kind for i in b} == {"M"}]
    assert mix and all({"<alice>", "<bob>"} <= {s.token for i in b for s in records[i].slots} for b in mix)


def test_partial_batch_only_at_the_end(dataset):
    records = dataset.records
    indices = list(range(len(records)))
    order = data.hard_negative_order(records, indices, epoch=2, seed=0, batch_size=3)
    full = len(order) // 3 * 3
    for start in range(0, full, 3):
        assert len(order[start : start + 3]) == 3


def test_holdout_split_holds_out_whole_groups(dataset):
    train, held = data.holdout_split(dataset.records, 0.2, seed=0)
    assert sorted(train + held) == list(range(len(dataset)))
    assert held and {dataset.records[i].group for i in held}.isdisjoint({dataset.records[i].group for i in train})
    everything, none = data.holdout_split(dataset.records, 0.0, seed=0)
    assert none == [] and sorted(everything) == list(range(len(dataset)))
    with pytest.raises(ClifError, match="held-out fraction"):
        data.holdout_split(dataset.records, 1.0, seed=0)


def test_open_dataset_refuses_a_folder_that_is_not_one(tmp_path):
    with pytest.raises(ClifError, match="manifest.json is missing"):
        data.open_dataset(tmp_path)
