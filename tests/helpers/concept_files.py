"""Synthetic concept files for a tiny base model, and a field-by-field equality check."""

from __future__ import annotations

import torch

from clif_core.concepts import lora_keys
from clif_core.concepts.file_format import ConceptEntry, ConceptFile


def synthetic_lora(model: torch.nn.Module, prefix: str, targets: tuple[str, ...], seed: int,
                   rank: int = 4, alpha: float = 2.0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA with random factors on every `targets` module of `model`."""
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for _, module, layer in lora_keys.target_modules(model, prefix, targets):
        w = layer.weight
        down_shape = (rank, w.shape[1], *w.shape[2:])
        up_shape = (w.shape[0], rank, *([1, 1] if w.dim() == 4 else []))
        lora[module + ".lora_down.weight"] = (torch.randn(down_shape, generator=gen) * 0.3).to(dtype)
        lora[module + ".lora_up.weight"] = (torch.randn(up_shape, generator=gen) * 0.3).to(dtype)
        lora[module + ".alpha"] = torch.tensor(alpha)
    return lora


def make_concept_file(base, seed: int = 0, k: int = 2, names=("alice", "bob"), text_lora: bool = True,
                      unet_targets=("to_q", "to_k", "to_v", "to_out.0", "conv1")) -> ConceptFile:
    gen = torch.Generator().manual_seed(seed)
    concepts = [
        ConceptEntry(name, f"<{name}>", "person", {s.name: torch.randn(k, s.width, generator=gen) for s in base.text})
        for name in names
    ]
    text = {}
    if text_lora:
        for keys in lora_keys.text_keys(base.family):
            text.update(synthetic_lora(base.slot(keys.name).encoder, keys.kohya_prefix,
                                       ("q_proj", "v_proj", "out_proj", "fc1"), seed + 1, rank=2, alpha=1.0))
    return ConceptFile(
        concepts=concepts,
        base_family=base.family,
        encoder_widths={s.name: s.width for s in base.text},
        base_fingerprint=base.fingerprint,
        base_prediction_type=base.prediction_type,
        unet_lora=synthetic_lora(base.unet, "lora_unet", tuple(unet_targets), seed + 2),
        text_lora=text,
        recipe={"stage2": {"rank": 4, "lr": 2e-4, "steps": 10}, "augment": ["G", "R", "M"]},
        title="Alice and Bob",
        kind="concepts",
    )


def assert_same(a: ConceptFile, b: ConceptFile) -> None:
    """Every field equal; tensors bit-identical with the same dtype."""

    def same_tensors(x: dict, y: dict) -> None:
        assert sorted(x) == sorted(y)
        for key, value in x.items():
            assert value.dtype == y[key].dtype, key
            assert torch.equal(value, y[key]), key

    assert len(a.concepts) == len(b.concepts)
    for ca, cb in zip(a.concepts, b.concepts):
        assert (ca.name, ca.token, ca.class_word) == (cb.name, cb.token, cb.class_word)
        same_tensors(ca.embeddings, cb.embeddings)
    same_tensors(a.unet_lora, b.unet_lora)
    same_tensors(a.text_lora, b.text_lora)
    for f in ("base_family", "encoder_widths", "base_fingerprint", "base_prediction_type", "recipe", "title",
              "thumbnail", "kind", "metadata"):
        assert getattr(a, f) == getattr(b, f), f
