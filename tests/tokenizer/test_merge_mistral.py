"""Merging into a real Llama-style tokenizer: Mistral 7B v0.1's tokenizer.model.v1 from `mistral-common`.

Installed by the test setup with `pip install --no-deps mistral-common`. Under CI (CI=true) a missing file
fails the test; locally it skips.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, LlamaTokenizer

from llms_trainer.tokenizer.merge import merge_tokenizer
from tests.helpers import EN_WORDS
from tests.tokenizer.support import MIXED_TEXTS, zh_texts

ENGLISH = ("The quick brown fox jumps over the lazy dog.", "In 2023, Mistral released a 7B model; it's fast!",
           "def add(a, b):\n    return a + b", " ".join(EN_WORDS))


def mistral_model() -> Path:
    spec = importlib.util.find_spec("mistral_common")
    path = Path(spec.origin).parent / "data" / "tokenizer.model.v1" if spec and spec.origin else None
    if path is None or not path.is_file():
        message = "mistral_common/data/tokenizer.model.v1 not found: pip install --no-deps mistral-common"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.slow
def test_merge_into_mistral_raises_chinese_chars_per_token_and_keeps_english(tmp_path, zh_model_path):
    base = mistral_model()
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n".join(zh_texts(60, seed=7)) + "\n", encoding="utf-8")
    report = merge_tokenizer(base, zh_model_path, tmp_path / "merged", held_out)
    assert report["base_size"] == 32000 and report["added"] > 50
    assert report["after"]["chars_per_token"] > 1.5 * report["before"]["chars_per_token"]
    before = spm.SentencePieceProcessor(model_file=str(base))
    after = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tokenizer.model").write_bytes(base.read_bytes())
    hf_before = LlamaTokenizer.from_pretrained(str(tmp_path / "base"), add_bos_token=True)
    merged = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert merged.convert_ids_to_tokens(list(range(32000))) == [before.id_to_piece(i) for i in range(32000)]
    for text in ENGLISH:
        assert after.encode(text) == before.encode(text)
        assert merged.encode(text) == hf_before.encode(text)
        assert merged.encode(text)[0] == 1  # BOS added, as Mistral does
    for text in MIXED_TEXTS:
        assert merged.decode(merged.encode(text, add_special_tokens=False)) == text
    for text in zh_texts(10, seed=8):
        assert merged.encode(text, add_special_tokens=False) == after.encode(text)
