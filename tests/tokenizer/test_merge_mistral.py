"""Merging into a real Llama-style tokenizer: Mistral 7B v0.1's tokenizer.model.v1 from `mistral-common`.

Installed by the test setup with `pip install --no-deps mistral-common`. Under CI (CI=true) a missing file
fails the test; locally it skips.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, LlamaTokenizer

from llms_trainer.tokenizer.merge import merge_tokenizer
from llms_trainer.tokenizer.train import texts_from_file, train_model
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
        assert merged.encode(text) == [1] + before.encode(text)  # BOS added, as Mistral does
        if "  " not in text:  # transformers ranks Mistral's -1e9 whitespace merges by id, SentencePiece last
            assert merged.encode(text) == hf_before.encode(text)
    for text in MIXED_TEXTS:
        assert merged.decode(merged.encode(text, add_special_tokens=False)) == text
    for text in zh_texts(10, seed=8):
        assert merged.encode(text, add_special_tokens=False) == after.encode(text)


def chinese_corpus() -> list[str]:
    """Word-based Chinese lines plus phrases that make BPE learn 人不, 别人 and 不敢 at neighbouring ranks."""
    rng = random.Random(3)
    phrases = [("有人不在家。", "很多人不知道。", "人不多。")] * 300 + [("告诉别人吧。", "别人的书。", "帮助别人。")] * 200
    phrases += [("我不敢去。", "他不敢说。")] * 100
    return zh_texts(600) + [rng.choice(choices) for choices in phrases]


@pytest.mark.slow
def test_merged_tokenizer_model_and_json_encode_held_out_text_alike(tmp_path):
    base = mistral_model()
    (tmp_path / "zh.model").write_bytes(train_model(chinese_corpus(), vocab_size=500))
    held_out = [*zh_texts(40, seed=11), *MIXED_TEXTS, *ENGLISH, "他说别人不敢去。长江全长约6300千米，别人不敢说。",
                "The   model\n    reads 别人不敢 data,  twice  spaced."]
    (tmp_path / "held_out.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    report = merge_tokenizer(base, tmp_path / "zh.model", tmp_path / "merged", tmp_path / "held_out.txt")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    lines = texts_from_file(tmp_path / "held_out.txt")
    # transformers adds no dummy "▁" before a text that starts with a space (SentencePiece does): known, not ours
    texts = [t for t in lines if not t.startswith(" ")]
    assert len(texts) >= 50
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert hf(text)["input_ids"] == [1] + sp.encode(text)
    assert report["sentencepiece_mismatches"] == len(lines) - len(texts)  # the indented code lines only
    assert report["after"]["tokens"] == sum(len(hf.encode(t, add_special_tokens=False)) for t in lines)
