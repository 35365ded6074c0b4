"""Concept tokens while training: k new vectors per concept in every text encoder, trainable where asked.

The tokens are added exactly as inference adds them (`clif_core.concepts.apply.apply_concepts`: tokenizer
copies with "<a>", "<a>_1", …, extended embedding tables, the EOS-pooling fix, and a text LoRA from an
earlier stage). On the encoders being trained, the extended table is then wrapped by `ConceptRows`: the
original rows are used as they are, without gradient, and only the new rows are a parameter, so no
other row can move (they are the very same tensor) and the optimizer holds state for the new rows only.
Leaving `ConceptTokens` (or `remove()`) puts the base model back exactly as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from clif_core.concepts.apply import AppliedConcepts, apply_concepts
from clif_core.concepts.file_format import ConceptEntry, ConceptFile
from clif_core.errors import ClifError

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel


class ConceptRows(torch.nn.Module):
    """An embedding table: rows below `n_frozen` are the original table's (frozen), the rest a Parameter."""

    def __init__(self, table: torch.nn.Embedding, n_frozen: int):
        super().__init__()
        self.frozen = table.weight.detach()[:n_frozen]  # a view, not a copy; deliberately not a buffer
        self.rows = torch.nn.Parameter(table.weight.detach()[n_frozen:].float().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (read-only copy) for code that inspects it."""
        return torch.cat([self.frozen, self.rows.detach().to(self.frozen.dtype)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = self.frozen.shape[0]
        old = F.embedding(input_ids.clamp(max=n - 1), self.frozen)
        new = F.embedding((input_ids - n).clamp(min=0, max=self.rows.shape[0] - 1), self.rows).to(old.dtype)
        return torch.where((input_ids >= n).unsqueeze(-1), new, old)


def class_word_vectors(slot: Any, class_word: str, k: int) -> torch.Tensor:
    """[k, width] float32 initial vectors: the mean of the class word's token embeddings, k times."""
    ids = slot.tokenizer(class_word, add_special_tokens=False).input_ids
    if not class_word.strip() or not ids:
        raise ClifError(f"class word {class_word!r} gives no tokens; give each concept a class word such as 'man'")
    table = slot.encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, device=table.device)].float().mean(0, keepdim=True).repeat(k, 1).cpu()


def initial_concepts(base: BaseModel, concepts: Sequence[tuple[str, str, str]], vectors: int) -> ConceptFile:
    """A concept file (no LoRA) whose (name, token, class word) concepts start from their class words."""
    if vectors < 1:
        raise ClifError(f"vectors per concept is {vectors}; it must be at least 1")
    entries = [
        ConceptEntry(name, token, class_word, {s.name: class_word_vectors(s, class_word, vectors) for s in base.text})
        for name, token, class_word in concepts
    ]
    return ConceptFile(
        concepts=entries, base_family=base.family, encoder_widths={s.name: s.width for s in base.text},
        base_fingerprint=base.fingerprint, base_prediction_type=base.prediction_type,
    )


class ConceptTokens:
    """`init`'s concepts (and its text LoRA) applied to `base`; rows of the `trainable` encoders train.

    A context manager (or call `remove()`): it takes off exactly what it put on, the row wrappers and then
    the applied concepts, and nothing another owner added (a LoRA being trained has its own owner)."""

    def __init__(self, base: BaseModel, init: ConceptFile, trainable: Sequence[str]):
        self.base = base
        self.init = init
        self.applied: AppliedConcepts = apply_concepts(base, [(init, 1.0)])
        self.rows: dict[str, torch.nn.Parameter] = {}
        self._extended: dict[str, torch.nn.Module] = {}  # encoder → the table the rows wrap
        n_new = sum(c.vectors for c in init.concepts)
        try:
            for slot in base.text:
                if slot.name in trainable:
                    table = slot.encoder.get_input_embeddings()
                    wrapped = ConceptRows(table, table.weight.shape[0] - n_new)
                    slot.encoder.set_input_embeddings(wrapped)
                    self._extended[slot.name] = table
                    self.rows[slot.name] = wrapped.rows
        except BaseException:
            self.remove()
            raise

    def __enter__(self) -> "ConceptTokens":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def expand(self, prompt: str) -> str:
        """The prompt with each placeholder written as its k vector tokens."""
        return self.applied.expand_prompt(prompt)

    def entries(self) -> list[ConceptEntry]:
        """The concepts with their current vectors (float32, CPU)."""
        out, at = [], 0
        for c in self.init.concepts:
            embeddings = {}
            for enc, emb in c.embeddings.items():
                rows = self.rows.get(enc)
                value = rows[at : at + c.vectors] if rows is not None else emb
                embeddings[enc] = value.detach().float().cpu().clone()
            out.append(ConceptEntry(c.name, c.token, c.class_word, embeddings))
            at += c.vectors
        return out

    def remove(self) -> None:
        """Take the row wrappers and the applied concepts off the base model again (idempotent)."""
        while self._extended:
            name, table = self._extended.popitem()
            self.base.slot(name).encoder.set_input_embeddings(table)
        self.applied.remove()
