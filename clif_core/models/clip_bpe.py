"""The CLIP BPE tokenizer files (vocab.json, merges.txt), built offline from open_clip's vocabulary.

No model hub is reachable, so the tokenizer files every CLIP text encoder of Stable Diffusion uses are
shipped in `configs/clip_bpe/`. They are derived, not downloaded: `build_clip_bpe_files` turns open_clip's
`bpe_simple_vocab_16e6.txt.gz` (the vocabulary OpenAI published with CLIP) into the two files transformers'
`CLIPTokenizer` reads. A test checks that the shipped files equal what the builder makes.

The id layout is CLIP's: 256 byte symbols, the same 256 with the end-of-word marker `</w>`, one entry per
merge (48,894 of them), then `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 49,408 ids.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

from clif_core.errors import ClifError

BPE_DIR = Path(__file__).parent / "configs" / "clip_bpe"
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
_NUM_MERGES = VOCAB_SIZE - 256 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table (GPT-2's): printable bytes map to themselves."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def open_clip_bpe_path() -> Path:
    """Where the installed open-clip-torch package keeps CLIP's BPE vocabulary (without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ClifError(
            "open-clip-torch is not installed: it ships CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz) "
            "from which the tokenizer files are built; install it with `pip install open-clip-torch`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ClifError(f"{path} is missing from the open-clip-torch package; reinstall open-clip-torch")
    return path


def build_clip_bpe_texts(bpe_gz: Optional[Path] = None) -> tuple[str, str]:
    """Return the text of (vocab.json, merges.txt) built from CLIP's BPE vocabulary file."""
    source = Path(bpe_gz) if bpe_gz is not None else open_clip_bpe_path()
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")
    # Line 0 is a version comment; CLIP uses the first 48,894 merges that follow.
    merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    if len(vocab_list) != VOCAB_SIZE or any(len(m) != 2 for m in merges):
        raise ClifError(f"{source} is not CLIP's BPE vocabulary (expected {_NUM_MERGES} merges)")
    vocab = {token: i for i, token in enumerate(vocab_list)}
    vocab_text = json.dumps(vocab, ensure_ascii=False) + "\n"
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return vocab_text, merges_text


def build_clip_bpe_files(out_dir: Path, bpe_gz: Optional[Path] = None) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt into `out_dir` (atomically); return their paths."""
    from clif_core.fileio import write_text_atomic

    vocab_text, merges_text = build_clip_bpe_texts(bpe_gz)
    out = Path(out_dir)
    return write_text_atomic(out / "vocab.json", vocab_text), write_text_atomic(out / "merges.txt", merges_text)


@lru_cache(maxsize=1)
def _shipped_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (BPE_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split(" ")) for line in lines]
    return vocab, merges


def clip_tokenizer(pad_token: str = EOS_TOKEN):
    """A transformers `CLIPTokenizer` on the shipped BPE files.

    `pad_token` is the family's: "<|endoftext|>" for OpenAI CLIP-L (SD1.x, SDXL's first encoder), "!" for the
    OpenCLIP encoders (SD2.x, SDXL's second), as in the published tokenizer configs.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _shipped_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=MODEL_MAX_LENGTH,
    )
