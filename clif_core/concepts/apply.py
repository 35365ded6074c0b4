"""Apply concept files to a diffusers-side BaseModel for sampling, and take them off again.

`apply_concepts` works on the given BaseModel in place, reversibly:
- tokens: each concept's k vectors become the tokens "<alice>", "<alice>_1", … (diffusers' multi-vector
  textual-inversion naming). Every slot gets a copy of its tokenizer with the tokens added, and its encoder
  a new, larger input-embedding table whose first rows are the original ones;
- LoRA: one peft adapter per file, loaded by the model's own loaders (diffusers' `load_lora_adapter` for the
  UNet, transformers' `load_adapter` for text encoders) with keys and ranks/alphas mapped exactly by
  `lora_keys.to_peft`, and weighted by the file's strength.
`AppliedConcepts.remove()` (or leaving its `with` block) puts back the original tokenizer objects, the
original embedding modules and removes exactly the adapters it added (`AppliedConcepts.adapters`; the peft
layers go with the last adapter of a module), so the base computes bit-identically to before. Adapters that
another owner added meanwhile (a LoRA being trained) are that owner's to remove.

The sampler applies files through `merged.apply_merged` instead: the same checks and tokens, with the LoRAs
merged into the weights from deltas kept across runs (that module says why); it loads live adapters the way
`apply_concepts` does only for files isolated to a region. `apply_concepts` stays for whoever needs live
adapters throughout (training, the erasure trainer).
"""

from __future__ import annotations

import copy
import logging
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch

from clif_core.errors import ClifError
from clif_core.models.adapters import has_peft, remove_adapters
from clif_core.validation import check_strength

from . import lora_keys
from .checks import check_compatible, validate
from .file_format import ConceptFile, WarnFn

if TYPE_CHECKING:
    from clif_core.models.base import BaseModel

logger = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"<[^<>\s:]+>")
"""What a placeholder looks like in a prompt ("<alice>"); A1111-style "<lora:x:1>" tags do not match."""


def vector_tokens(token: str, k: int) -> list[str]:
    """The k tokenizer entries of a placeholder: "<alice>", "<alice>_1", …, "<alice>_{k-1}"."""
    return [token] + [f"{token}_{i}" for i in range(1, k)]


def expand_prompt(prompt: str, tokens: Mapping[str, Sequence[str]]) -> str:
    """Replace every placeholder with its vector tokens ("<alice>" → "<alice> <alice>_1").

    `tokens` maps placeholders to their vector tokens (`AppliedConcepts.tokens`). Already expanded text is
    left as it is, so expanding twice changes nothing. A placeholder-looking word that is not loaded raises
    ClifError listing the loaded ones.
    """
    replacements: dict[str, str] = {}
    for token, vectors in tokens.items():
        expanded = " ".join(vectors)
        replacements.update({v: v for v in vectors[1:]})
        replacements[expanded] = expanded
        replacements[token] = expanded
    rest = prompt
    if replacements:
        ordered = sorted(replacements, key=len, reverse=True)  # the longest match wins
        pattern = re.compile("|".join(re.escape(r) + (r"(?!_\d)" if r in tokens else "") for r in ordered))
        rest = pattern.sub(" ", prompt)
        prompt = pattern.sub(lambda m: replacements[m.group(0)], prompt)
    unknown = sorted(set(PLACEHOLDER.findall(rest)))
    if unknown:
        loaded = ", ".join(sorted(tokens)) or "none"
        raise ClifError(
            f"prompt uses {', '.join(unknown)}, which no applied concept file defines; loaded placeholders: "
            f"{loaded}. Fix the spelling or apply the concept file that defines it"
        )
    return prompt


def _adapter_name(index: int) -> str:
    return f"clif_{index}"


@dataclass
class AppliedConcepts:
    """The concepts applied to `base`. `tokens` maps each placeholder to its vector tokens; `adapters` names
    the peft adapters this application added (with their strengths), `file_adapters` which file each came from
    (index in the list given to `apply_concepts`). It removes exactly these, and the tokens, again."""

    base: BaseModel
    tokens: dict[str, list[str]]
    adapters: dict[str, float]  # adapter name → strength
    file_adapters: dict[int, str] = field(default_factory=dict)  # file index → adapter name
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def expand_prompt(self, prompt: str) -> str:
        return expand_prompt(prompt, self.tokens)

    def adapter_of(self, index: int) -> Optional[str]:
        """The adapter of the `index`-th file, or None when it added none (no LoRA, or strength 0)."""
        return self.file_adapters.get(index)

    def remove(self) -> None:
        """Restore the base model exactly as it was before `apply_concepts` (idempotent)."""
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "AppliedConcepts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_EXTENDED: "weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], Any]]" = weakref.WeakKeyDictionary()
"""Copies of a tokenizer with concept tokens added, per original tokenizer and token list (the last few). Copying
a tokenizer (its vocabulary and merges) costs about a second, and a sampler applies the same concept files
run after run. Nothing in the pack changes a tokenizer in place (tokens are always added to a copy), so a copy
is reused as it is."""
EXTENDED_KEPT = 4


def _extended_tokenizer(tokenizer: Any, new_tokens: list[str], where: str) -> Any:
    """A copy of `tokenizer` with `new_tokens` added (made once, then reused)."""
    copies = _EXTENDED.setdefault(tokenizer, {})
    key = tuple(new_tokens)
    if key not in copies:
        extended = copy.deepcopy(tokenizer)
        added = extended.add_tokens(new_tokens)
        if added != len(new_tokens):
            raise ClifError(f"the {where} tokenizer accepted {added} of {len(new_tokens)} concept tokens")
        while len(copies) >= EXTENDED_KEPT:
            copies.pop(next(iter(copies)))
        copies[key] = extended
    return copies[key]


def _in_vocabulary(tokenizer: Any, tokens: list[str]) -> list[str]:
    """Those of `tokens` the tokenizer already has. Looked up one by one (an unknown token maps to the unknown
    token's id): `get_vocab()` builds the whole vocabulary as a dict, a tenth of a second and more per call."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unknown = tokenizer.unk_token_id
    return [t for t, i in zip(tokens, ids) if i is not None and (i != unknown or t == tokenizer.unk_token)]


def add_tokens(base: BaseModel, files: Sequence[ConceptFile], applied: AppliedConcepts) -> None:
    """Add each file's concept tokens and their embeddings to every text encoder; recorded in `applied`."""
    for slot in base.text:
        tokenizer, encoder = slot.tokenizer, slot.encoder
        new_tokens: list[str] = []
        rows: list[torch.Tensor] = []
        for cf in files:
            for c in cf.concepts:
                names = vector_tokens(c.token, c.vectors)
                taken = _in_vocabulary(tokenizer, names)
                if taken:
                    raise ClifError(
                        f"placeholder {c.token!r} of concept {c.name!r} is already a token of the {slot.name} "
                        f"tokenizer ({', '.join(taken)}); is a concept file with it already applied? Remove it "
                        "first or pick another token"
                    )
                new_tokens.extend(names)
                rows.append(c.embeddings[slot.name])
        if not new_tokens:
            continue
        extended = _extended_tokenizer(tokenizer, new_tokens, slot.name)
        first = extended.convert_tokens_to_ids(new_tokens[0])
        old = encoder.get_input_embeddings()
        n, width = old.weight.shape
        if first != n:
            raise ClifError(
                f"the {slot.name} tokenizer has {first} entries but its encoder has {n} embedding rows; "
                "the base model's tokenizer and text encoder do not match"
            )
        with torch.no_grad():  # built from its rows directly: no random initialisation to overwrite
            weight = torch.cat([old.weight.detach(), torch.cat(rows).to(old.weight)])
        table = torch.nn.Embedding(n + len(new_tokens), width, _weight=weight, _freeze=not old.weight.requires_grad)
        encoder.set_input_embeddings(table)
        slot.tokenizer = extended
        text_model = getattr(encoder, "text_model", encoder)
        eos_before = getattr(text_model, "eos_token_id", None)
        # transformers' CLIP with the legacy eos_token_id 2 pools at argmax(input_ids), which would pick an
        # added token; pooling at the real EOS id is identical for the original vocabulary.
        if eos_before == 2 and extended.eos_token_id not in (None, 2):
            text_model.eos_token_id = extended.eos_token_id

        def undo(slot=slot, tokenizer=tokenizer, encoder=encoder, old=old, text_model=text_model, eos=eos_before):
            encoder.set_input_embeddings(old)
            slot.tokenizer = tokenizer
            if eos is not None:
                text_model.eos_token_id = eos

        applied._undo.append(undo)


def lora_components(base: BaseModel) -> list[tuple[Any, str, str]]:
    """(module, diffusers component name, kohya prefix) of every part of `base` a concept file's LoRA adapts."""
    components: list[tuple[Any, str, str]] = [(base.unet, "unet", lora_keys.UNET_PREFIX)]
    components += [(base.slot(k.name).encoder, k.component, k.kohya_prefix) for k in lora_keys.text_keys(base.family)]
    return components


def refuse_busy(components: Sequence[tuple[Any, str, str]]) -> None:
    """ClifError when a component already carries peft adapters (another application's, or a LoRA in training)."""
    busy = [name for module, name, _ in components if has_peft(module)]
    if busy:
        raise ClifError(
            f"the base model's {', '.join(busy)} already carries LoRA adapters; apply concepts to a base without "
            "adapters (remove() the earlier AppliedConcepts, or pass all concept files in one call)"
        )


def load_loras(base: BaseModel, files: Sequence[tuple[ConceptFile, float]], applied: AppliedConcepts) -> None:
    """Load each file's LoRA as a live peft adapter at its strength; the adapters' names go to `applied`."""
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters
    from peft import LoraConfig

    components = lora_components(base)
    refuse_busy(components)
    per_component: dict[str, tuple[list[str], list[float]]] = {name: ([], []) for _, name, _ in components}
    for module, name, _ in components:  # this application's adapters, also those a failed load left half-made
        applied._undo.append(lambda module=module, names=per_component[name][0]: remove_adapters(module, names))
    for i, (cf, strength) in enumerate(files):
        if strength == 0 or not (cf.unet_lora or cf.text_lora):
            continue
        adapter = _adapter_name(i)
        applied.adapters[adapter] = float(strength)
        applied.file_adapters[i] = adapter
        for module, name, kohya_prefix in components:
            source = cf.unet_lora if kohya_prefix == lora_keys.UNET_PREFIX else {
                k: v for k, v in cf.text_lora.items() if k.startswith(kohya_prefix + "_")
            }
            if not source:
                continue
            per_component[name][0].append(adapter)
            per_component[name][1].append(float(strength))
            state_dict, config = lora_keys.to_peft(source, module, kohya_prefix)
            if name == "unet":  # diffusers' loader: peft keys are taken as they are, config as given
                module.load_lora_adapter(state_dict, prefix=None, adapter_name=adapter, metadata=config)
            else:  # transformers' peft integration, which diffusers' own text-encoder loader calls
                module.load_adapter(adapter_name=adapter, adapter_state_dict=state_dict,
                                    peft_config=LoraConfig(**config))
    for module, name, _ in components:
        names, weights = per_component[name]
        if names:
            set_weights_and_activate_adapters(module, names, weights)


def apply_concepts(
    base: BaseModel, files: Sequence[tuple[ConceptFile, float]], warn: Optional[WarnFn] = None
) -> AppliedConcepts:
    """Apply concept files (each with a LoRA strength) to `base` (a BaseModel); undo with `.remove()`.

    Every file is checked against the base first (family, widths, LoRA shapes: ClifError; another base
    fingerprint: a warning to `warn`). Placeholders must be unique across the files. A strength of 0 skips
    a file's LoRA but keeps its tokens.
    """
    check_files(base, files, warn)
    applied = AppliedConcepts(base=base, tokens=file_tokens(files), adapters={})
    try:
        add_tokens(base, [cf for cf, _ in files], applied)
        load_loras(base, files, applied)
    except BaseException:
        applied.remove()
        raise
    return applied


def file_tokens(files: Sequence[tuple[ConceptFile, float]]) -> dict[str, list[str]]:
    """Each placeholder of the files → its vector tokens."""
    return {c.token: vector_tokens(c.token, c.vectors) for cf, _ in files for c in cf.concepts}


def check_files(base: BaseModel, files: Sequence[tuple[ConceptFile, float]], warn: Optional[WarnFn] = None) -> None:
    """What `apply_concepts` checks before it changes anything: each file valid and compatible with `base`
    (incompatibility: ClifError; another base fingerprint: a warning to `warn`), strengths valid,
    placeholders unique across the files."""
    seen: dict[str, str] = {}
    for cf, strength in files:
        where = f"concept file {cf.display_title()!r}"
        validate(cf, where)
        check_strength(strength, f"LoRA strength of {where}")
        for message in check_compatible(cf, base, where):
            (warn or logger.warning)(message)
        for c in cf.concepts:
            if c.token in seen:
                raise ClifError(
                    f"placeholder {c.token!r} is defined by two applied concept files ({seen[c.token]!r} and "
                    f"{cf.display_title()!r}); apply only one of them"
                )
            seen[c.token] = cf.display_title()
