"""What the trainers read from an augmented dataset: its concepts, a held-out split, batch orders.

Stage 1's negatives are the other pairs in its batch, so `hard_negative_order` builds batches from whole
groups (a group is one composition drawn in both slot orders: the same layout with the concepts swapped)
and from one kind at a time (Region batches hold the parts of different concepts side by side, Mix
batches the pairs of concepts), then shuffles the batches (a partial one stays last, where the loop drops
it). Every order is a function of (seed, epoch).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch

from clif_core.augment.dataset import AugmentedDataset, load_dataset
from clif_core.errors import ClifError


def open_dataset(folder: str | Path) -> AugmentedDataset:
    ds = load_dataset(folder)
    if len(ds) == 0:
        raise ClifError(f"dataset {folder} has no samples; build it again with some sample counts above 0")
    if not ds.manifest.get("concepts"):
        raise ClifError(f"dataset {folder} lists no concepts in its manifest.json; build it with the Augment step")
    return ds


def dataset_concepts(ds: AugmentedDataset) -> list[tuple[str, str, str]]:
    """(name, token, class word) of every concept of the dataset, in manifest order."""
    return [(c["name"], c["token"], c["class_word"]) for c in ds.manifest["concepts"]]


def dataset_fingerprint(ds: AugmentedDataset) -> str:
    """Identifies the dataset's content for a run's recipe (its manifest and sample list)."""
    h = hashlib.sha256()
    for path in (ds.root / "manifest.json", ds.root / "train" / "metadata.jsonl"):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _generator(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


def _shuffle(items: Sequence[Any], g: torch.Generator) -> list[Any]:
    return [items[i] for i in torch.randperm(len(items), generator=g).tolist()]


def shuffled_order(indices: Sequence[int], epoch: int, seed: int) -> list[int]:
    return _shuffle(list(indices), _generator(seed, epoch))


def holdout_split(records: Sequence[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) sample indices; whole groups are held out, at least one when `fraction` > 0 and
    there are two groups or more."""
    if not 0 <= fraction < 1:
        raise ClifError(f"held-out fraction {fraction} must be at least 0 and below 1")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.group].append(i)
    ids = sorted(groups)
    n_held = 0 if fraction == 0 or len(ids) < 2 else max(1, round(fraction * len(ids)))
    held_ids = set(_shuffle(ids, _generator(seed, -1))[:n_held])
    train = [i for g in ids if g not in held_ids for i in groups[g]]
    held = [i for g in ids if g in held_ids for i in groups[g]]
    return train, held


def hard_negative_order(
    records: Sequence[Any], indices: Sequence[int], epoch: int, seed: int, batch_size: int
) -> list[int]:
    """An epoch of `indices` as consecutive batches of `batch_size` holding hard negatives together.

    Groups are shuffled within their kind and packed whole into batches of that kind; what does not fill a
    batch of one kind is pooled and packed into mixed batches. The batches are then shuffled.
    """
    g = _generator(seed, epoch)
    by_kind: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i in indices:
        by_kind[records[i].kind][records[i].group].append(i)
    batches: list[list[int]] = []
    leftover: list[list[int]] = []
    for kind in sorted(by_kind):
        current: list[int] = []
        for group in _shuffle(list(by_kind[kind].values()), g):
            if len(current) + len(group) > batch_size:
                leftover.append(current)
                current = []
            current = current + group
            if len(current) >= batch_size:
                batches.append(current[:batch_size])
                leftover.append(current[batch_size:])
                current = []
        leftover.append(current)
    pool = [i for part in _shuffle([p for p in leftover if p], g) for i in part]
    batches += [pool[j : j + batch_size] for j in range(0, len(pool) - batch_size + 1, batch_size)]
    rest = pool[len(pool) - len(pool) % batch_size :] if len(pool) % batch_size else []
    return [i for batch in _shuffle(batches, g) for i in batch] + rest  # a partial batch only at the end
