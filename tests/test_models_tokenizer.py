"""The shipped CLIP BPE files are exactly what the builder makes from open_clip's vocabulary, and tokenize
like CLIP."""

from __future__ import annotations

import pytest

from clif_core.errors import ClifError
from clif_core.models.clip_bpe import BPE_DIR, build_clip_bpe_files, build_clip_bpe_texts, clip_tokenizer


def test_shipped_files_equal_the_open_clip_build(tmp_path):
    vocab_path, merges_path = build_clip_bpe_files(tmp_path)
    assert vocab_path.read_bytes() == (BPE_DIR / "vocab.json").read_bytes()
    assert merges_path.read_bytes() == (BPE_DIR / "merges.txt").read_bytes()


def test_vocabulary_layout_is_clips():
    import json

    vocab_text, merges_text = build_clip_bpe_texts()
    vocab = json.loads(vocab_text)
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    merges = merges_text.splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894


def test_tokenizer_gives_clip_ids_and_family_padding():
    tok = clip_tokenizer()
    # Reference ids of OpenAI CLIP's tokenizer for this prompt.
    assert tok("A photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 49407
    open_clip_style = clip_tokenizer("!")
    assert open_clip_style.pad_token_id == 0
    assert open_clip_style("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]
    assert tok.decode(tok("Hello, World!").input_ids, skip_special_tokens=True) == "hello , world !"


def test_builder_rejects_a_file_that_is_not_clips_vocabulary(tmp_path):
    import gzip

    fake = tmp_path / "bpe.txt.gz"
    with gzip.open(fake, "wt", encoding="utf-8") as f:
        f.write("#version\na b\nc d\n")
    with pytest.raises(ClifError, match="not CLIP's BPE vocabulary"):
        build_clip_bpe_texts(fake)
