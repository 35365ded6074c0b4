"""The oracle: a small CNN that reads a 64×64 sandbox image back into what is drawn in each slot.

    oracle = Oracle.load()                      # the committed weights
    reading = oracle.read([pil_image])[0]
    reading.slots["left"]                       # a Shape, a Figure (parts and detail) or None
    characters.match(reading.slots["center"])   # which benchmark character, or None

It reads object kind, shape, colour and texture, each figure part's attributes and the uncaptioned detail;
the benchmark character follows by matching those against a character spec, so the oracle also identifies
characters it never saw in training. Training: `clif_core.sandbox.oracle_train`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from clif_core.errors import ClifError
from clif_core.fileio import save_safetensors_atomic
from clif_core.sandbox.attributes import IMAGE_SIZE, SLOTS
from clif_core.sandbox.oracle_heads import (
    HEAD_SIZES,
    HEADS,
    N_LOGITS_PER_SLOT,
    decode_thing,
    scene_slots,
    thing_values,
    vocabulary_signature,
)
from clif_core.sandbox.scene import Scene, Thing

WEIGHTS_DIR = Path(__file__).parent / "weights" / "oracle"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "oracle.safetensors"
FORMAT = "clif-sandbox-oracle"


@dataclass(frozen=True)
class OracleArch:
    """Network shape: conv widths at 32, 16 and 8 px (after a 2×2 space-to-depth stem) and the hidden width."""

    widths: tuple[int, int, int] = (32, 64, 128)
    hidden: int = 256


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def _down(i: int, o: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class OracleNet(nn.Module):
    """A small residual CNN to an 8×8 feature map, read out per slot by pooling over the slot's region.

    Each slot's reader sees the average and maximum of the features over its region (left half, right half,
    whole image for the centre) plus the averages over the other regions (so it can tell one centred object
    from two), and a one-hot of which slot it is; one MLP, shared by the slots, gives every head's logits.
    Pooling makes the reading independent of where in its slot an object sits, which is what lets the
    oracle learn from a few minutes of CPU training. Input: float images in 0..1, [B, 3, 64, 64].
    Output: logits [B, len(SLOTS) * N_LOGITS_PER_SLOT].
    """

    def __init__(self, arch: OracleArch = OracleArch()):
        super().__init__()
        a, b, c = arch.widths
        self.trunk = nn.Sequential(
            nn.PixelUnshuffle(2),
            _down(12, a, 1), _Residual(a),
            _down(a, b, 2), _Residual(b),
            _down(b, c, 2), _Residual(c),
        )
        self.reader = nn.Sequential(
            nn.Linear(4 * c + len(SLOTS), arch.hidden), nn.ReLU(inplace=True),
            nn.Linear(arch.hidden, N_LOGITS_PER_SLOT),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slot reader inputs without the slot one-hot, [B, len(SLOTS), 4 * width]."""
        f = self.trunk((x - 0.5) * 4.0)
        half = f.shape[-1] // 2
        left, right = f[..., :half], f[..., half:]
        l_avg, r_avg, all_avg = left.mean((2, 3)), right.mean((2, 3)), f.mean((2, 3))
        l_max, r_max, all_max = left.amax((2, 3)), right.amax((2, 3)), f.amax((2, 3))
        return torch.stack(
            [  # in SLOTS order: left, right, center
                torch.cat([l_avg, l_max, r_avg, all_max], 1),
                torch.cat([r_avg, r_max, l_avg, all_max], 1),
                torch.cat([all_avg, all_max, l_avg, r_avg], 1),
            ],
            1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        onehot = torch.eye(len(SLOTS), device=x.device, dtype=feats.dtype).expand(x.shape[0], -1, -1)
        return self.reader(torch.cat([feats, onehot], 2)).reshape(x.shape[0], -1)


def split_logits(logits: torch.Tensor) -> list[torch.Tensor]:
    """[B, slots * per-slot logits] → one [B, slots, n_values] tensor per head, in `HEADS` order."""
    per_slot = logits.reshape(logits.shape[0], len(SLOTS), N_LOGITS_PER_SLOT)
    return list(torch.split(per_slot, HEAD_SIZES, dim=2))


@dataclass
class Reading:
    """What the oracle sees: per slot a Shape, a Figure or None, and the probability of each chosen value."""

    slots: dict[str, Optional[Thing]]
    confidence: dict[str, dict[str, float]] = field(default_factory=dict)


def to_batch(images: Union[Sequence[Any], np.ndarray, torch.Tensor]) -> torch.Tensor:
    """PIL images, uint8 arrays [N, 64, 64, 3], or float tensors [N, 3, 64, 64] in 0..1 → float tensor."""
    if isinstance(images, torch.Tensor):
        batch = images.float()
        if batch.max() > 1.5:
            batch = batch / 255.0
    else:
        arrays = images if isinstance(images, np.ndarray) else np.stack([np.asarray(im.convert("RGB")) for im in images])
        batch = torch.from_numpy(np.ascontiguousarray(arrays)).permute(0, 3, 1, 2).float() / 255.0
    if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ClifError(f"the oracle reads 64×64 RGB images; got a batch of shape {tuple(batch.shape)}")
    return batch


class Oracle:
    def __init__(self, net: OracleNet, arch: OracleArch, metadata: Optional[dict[str, str]] = None):
        self.net = net.eval()
        self.arch = arch
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @classmethod
    def load(cls, path: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu") -> "Oracle":
        from safetensors import safe_open

        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise ClifError(f"{path}: no oracle weights there; train them with `clif sandbox oracle-train --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise ClifError(f"{path}: not a readable safetensors file ({err}); train or copy the oracle again") from None
        if metadata.get("format") != FORMAT:
            raise ClifError(f"{path}: not sandbox oracle weights (metadata format is {metadata.get('format')!r})")
        if metadata.get("vocabulary") != vocabulary_signature():
            raise ClifError(
                f"{path}: these oracle weights were trained for another sandbox vocabulary (slots, heads or values "
                "differ from this version of the pack); retrain with `clif sandbox oracle-train`"
            )
        arch_raw = json.loads(metadata["arch"])
        arch = OracleArch(widths=tuple(arch_raw["widths"]), hidden=int(arch_raw["hidden"]))
        net = OracleNet(arch)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        return cls(net.to(device), arch, metadata)

    def save(self, path: Union[str, Path], extra: Optional[dict[str, str]] = None) -> Path:
        """Weights in float16 (reads are unchanged to within noise, half the size) with the vocabulary."""
        metadata = {
            **self.metadata,
            **(extra or {}),
            "format": FORMAT,
            "vocabulary": vocabulary_signature(),
            "arch": json.dumps({"widths": list(self.arch.widths), "hidden": self.arch.hidden}),
        }
        state = {k: v.detach().half() if v.is_floating_point() else v for k, v in self.net.state_dict().items()}
        return save_safetensors_atomic(state, path, metadata)

    @torch.no_grad()
    def logits(self, images: Union[Sequence[Any], np.ndarray, torch.Tensor], batch_size: int = 256) -> torch.Tensor:
        batch = to_batch(images)
        out = [self.net(batch[i : i + batch_size].to(self.device)).float().cpu() for i in range(0, len(batch), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(SLOTS) * N_LOGITS_PER_SLOT)

    @torch.no_grad()
    def features(self, images: Union[Sequence[Any], np.ndarray, torch.Tensor], batch_size: int = 256) -> torch.Tensor:
        """What the oracle sees, [N, slots * 4 * width] (pooled features): a distance between images."""
        batch = to_batch(images)
        out = [self.net.features(batch[i : i + batch_size].to(self.device)).flatten(1).cpu()
               for i in range(0, len(batch), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(SLOTS) * 4 * self.arch.widths[-1])

    def read(self, images: Union[Sequence[Any], np.ndarray, torch.Tensor]) -> list[Reading]:
        heads = split_logits(self.logits(images))
        probs = [h.softmax(dim=-1) for h in heads]
        readings = []
        for i in range(heads[0].shape[0]):
            slots: dict[str, Optional[Thing]] = {}
            confidence: dict[str, dict[str, float]] = {}
            for s, slot in enumerate(SLOTS):
                values = {}
                conf = {}
                for head, p in zip(HEADS, probs):
                    k = int(p[i, s].argmax())
                    values[head.name] = head.values[k]
                    conf[head.name] = float(p[i, s, k])
                thing = decode_thing(values)
                slots[slot] = thing
                used = set(thing_values(thing))
                confidence[slot] = {k: v for k, v in conf.items() if k in used}
            readings.append(Reading(slots, confidence))
        return readings


# ------------------------------------------------------------------------------------------------ scoring


def strip_detail(thing: Optional[Thing]) -> Optional[Thing]:
    """The thing as a caption names it: a figure's detail removed (prompts never specify it)."""
    if thing is None or thing.kind != "figure":
        return thing
    return replace(thing, detail=None)


def slot_correct(expected: Optional[Thing], seen: Optional[Thing], with_detail: bool = False) -> bool:
    if with_detail:
        return expected == seen
    return strip_detail(expected) == strip_detail(seen)


def scene_correct(expected: Scene, reading: Reading, with_detail: bool = False) -> bool:
    """Every slot holds exactly what the scene (or the prompt it came from) says, and nothing else."""
    want = scene_slots(expected)
    return all(slot_correct(want[s], reading.slots[s], with_detail) for s in SLOTS)


def attribute_agreement(expected: Scene, reading: Reading) -> dict[str, tuple[int, int]]:
    """Head name → (correct, counted) over the slots where the head applies to the expected scene."""
    out: dict[str, list[int]] = {h.name: [0, 0] for h in HEADS}
    for slot, thing in scene_slots(expected).items():
        want = thing_values(thing)
        seen = thing_values(reading.slots[slot])
        for name, value in want.items():
            out[name][1] += 1
            out[name][0] += int(seen.get(name) == value)
    return {k: (v[0], v[1]) for k, v in out.items()}
