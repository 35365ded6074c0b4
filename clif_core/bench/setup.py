"""What both benchmarks start from: the base model, its vision tower, the oracle, the character spec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from clif_core.errors import ClifError

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


@dataclass
class BenchModel:
    base: BaseModel
    vision: Path
    note: str  # what the report says about the model (its quality record when there is one)


def load_bench_model(model: Optional[Path] = None, vision: Optional[Path] = None) -> BenchModel:
    """`model` / `vision` default to the bundled sandbox model and its tower (refused when not committed)."""
    from clif_core.models.bundled import SANDBOX_MODEL, SANDBOX_VISION, sandbox_available
    from clif_core.models.loader import load_base_model

    if model is None:
        if not sandbox_available():
            raise ClifError(
                f"the bundled sandbox model is not in this checkout ({SANDBOX_MODEL}); pass --model DIR --vision DIR "
                "(e.g. from `clif sandbox pretrain --preset test --work W --export M`: M/diffusers and M/vision)")
        model, vision = SANDBOX_MODEL, vision or SANDBOX_VISION
    model = Path(model)
    if vision is None:
        sibling = model.parent / "vision"
        if not sibling.is_dir():
            raise ClifError(f"no vision tower given for {model}; pass --vision DIR (the CLIP vision tower that pairs "
                            "with its text encoder, e.g. the `vision` folder `clif sandbox pretrain --export` writes)")
        vision = sibling
    record_path = model / "sandbox_model.json"
    note = f"{model}"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        note += f" (quality: {record.get('quality', '?')}). {record.get('note', '')}".rstrip()
    return BenchModel(load_base_model(model, device="cpu"), Path(vision), note)


def load_oracle() -> Any:
    from clif_core.sandbox.oracle import Oracle

    return Oracle.load()


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """'ada/ida,bo/bea' → [('ada', 'ida'), ('bo', 'bea')]."""
    pairs = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        names = [n.strip() for n in item.split("/")]
        if len(names) != 2 or not all(names):
            raise ClifError(f"pair {item!r} is not two character names joined by '/'; write e.g. --pairs ada/ida,bo/bea")
        pairs.append((names[0], names[1]))
    return pairs
