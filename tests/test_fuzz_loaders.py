"""Seeded fuzzing of the concept-file and erasure-patch loaders: any mutation of a valid file either loads (and
then passes the validator) or is refused with a ClifError, never another exception or a hang."""

from __future__ import annotations

import json
import random
import struct
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from clif_core.concepts.checks import validate
from clif_core.concepts.file_format import ConceptFile
from clif_core.concepts.files import load_concept_file, save_concept_file
from clif_core.erase.patch import load_erasure_patch
from clif_core.errors import ClifError
from clif_core.models.tiny import build_tiny_model
from tests.helpers.concept_files import make_concept_file

CASES_PER_KIND = 1100  # per loader; 2,200 in all
TIME_LIMIT_S = 45.0


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a small valid concept file and of a small valid erasure patch."""
    root = tmp_path_factory.mktemp("fuzz")
    base = build_tiny_model("sd1", 0)
    concepts = make_concept_file(base, k=1, text_lora=True, unet_targets=("to_q", "conv1"))
    patch = make_concept_file(base, names=(), text_lora=False, unet_targets=("to_k",))
    patch.kind, patch.title = "erasure", "no pigs"
    patch.metadata = {"erased": [{"target": "pig", "alternative": "cow"}], "unet_probe": {}}
    return {name: save_concept_file(cf, root / f"{name}.safetensors").read_bytes()
            for name, cf in (("concepts", concepts), ("erasure", patch))}


def _split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


_JSON_VALUES = [None, True, 0, -1, 3, 1e308, "", "x", "..", [], [1], {}, {"a": 1}, "NaN", [{"name": 1}]]


def _flip_bytes(rng: random.Random, raw: bytes) -> bytes:
    out = bytearray(raw)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _flip_header_bytes(rng: random.Random, raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    out = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        out[8 + rng.randrange(n)] = rng.choice(b'{}[]",:0123456789.-eE \x00\xff')
    return bytes(out)


def _truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(len(raw))]


def _length_prefix(rng: random.Random, raw: bytes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    new = rng.choice([0, 1, n - 1, n + 1, n * 2, len(raw), 2**63, 2**64 - 1, rng.randrange(2**32)])
    return struct.pack("<Q", new) + raw[8:]


def _metadata_value(rng: random.Random, raw: bytes) -> bytes:
    header, data = _split(raw)
    meta = header["__metadata__"]
    key = rng.choice(sorted(meta))
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = meta[key]
    if isinstance(value, (list, dict)) and value and rng.random() < 0.6:  # damage one element deep inside
        holder = value
        while isinstance(holder, (list, dict)) and holder:
            slot = rng.randrange(len(holder)) if isinstance(holder, list) else rng.choice(sorted(holder))
            if not isinstance(holder[slot], (list, dict)) or not holder[slot] or rng.random() < 0.4:
                holder[slot] = rng.choice(_JSON_VALUES)
                break
            holder = holder[slot]
    else:
        value = rng.choice(_JSON_VALUES)
    meta[key] = value if isinstance(value, str) and rng.random() < 0.3 else json.dumps(value)
    if rng.random() < 0.1:
        del meta[key]
    return _join(header, data)


def _tensor_entry(rng: random.Random, raw: bytes) -> bytes:
    header, data = _split(raw)
    key = rng.choice(sorted(k for k in header if k != "__metadata__"))
    entry = header[key]
    change = rng.randrange(5)
    if change == 0:
        entry["dtype"] = rng.choice(["I8", "U8", "I64", "F64", "BOOL", "F8_E4M3", "XX", 3])
    elif change == 1:
        entry["shape"] = rng.choice([[], [0], [1], [2, 2], [10**9, 10**9], [-1], "x"])
    elif change == 2:
        a, b = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[b, a], [a, a], [a, b + 4], [0, len(data) + 8], [-1, b], None])
    elif change == 3:
        header[rng.choice(["bundle_emb.x.clip_l", key + "x", "lora_unet_x_to_q.alpha", "lora_te_" + key])] = entry
    else:
        del header[key]
    return _join(header, data)


def _nonfinite_value(rng: random.Random, raw: bytes) -> bytes:
    """Overwrite one float32 of the tensor data with NaN or ±infinity."""
    header, data = _split(raw)
    key = rng.choice(sorted(k for k in header if k != "__metadata__" and header[k]["dtype"] == "F32"))
    a, b = header[key]["data_offsets"]
    at = a + 4 * rng.randrange((b - a) // 4)
    value = struct.pack("<f", rng.choice([float("nan"), float("inf"), float("-inf")]))
    return _join(header, data[:at] + value + data[at + 4 :])


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _flip_bytes, _flip_header_bytes, _truncate, _length_prefix, _metadata_value, _tensor_entry, _nonfinite_value,
]


def _loader(kind: str) -> Callable[[Path], ConceptFile]:
    return load_concept_file if kind == "concepts" else load_erasure_patch


@pytest.mark.parametrize("kind", ["concepts", "erasure"])
def test_mutated_files_load_validly_or_raise_only_clif_error(originals, tmp_path, kind):
    rng = random.Random(17 if kind == "concepts" else 71)
    load = _loader(kind)
    path = tmp_path / "fuzzed.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    started = time.monotonic()
    for case in range(CASES_PER_KIND):
        mutation = MUTATIONS[case % len(MUTATIONS)]
        path.write_bytes(mutation(rng, originals[kind]))
        try:
            cf = load(path)
        except ClifError as err:
            assert str(path) in str(err), f"case {case} ({mutation.__name__}): message does not name the file: {err}"
            outcomes["refused"] += 1
        except Exception as err:  # noqa: BLE001 - the point of the test
            pytest.fail(f"case {case} ({mutation.__name__}) raised {type(err).__name__}: {err}")
        else:
            validate(cf, "loaded fuzz case")  # what loads is a valid concept set
            assert all(bool(torch.isfinite(t).all()) for t in [*cf.unet_lora.values(), *cf.text_lora.values()])
            outcomes["loaded"] += 1
    assert time.monotonic() - started < TIME_LIMIT_S
    assert outcomes["refused"] > CASES_PER_KIND // 2, outcomes  # most mutations break the file
    assert sum(outcomes.values()) == CASES_PER_KIND
