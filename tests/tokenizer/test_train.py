"""Training SentencePiece on shards and jsonl: Llama settings, determinism, caps, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from llms_trainer.data.shards import dump_record, write_source
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.train import collect_sentences, output_paths, save_model, train_model
from tests.helpers import text_records, write_jsonl
from tests.tokenizer.support import zh_texts

ROOT = Path(__file__).resolve().parents[2]


def _proto(model: bytes) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model)
    return proto


@pytest.fixture
def corpus(tmp_path):
    """Two shard sources under tmp/shards, one jsonl pretrain file and one jsonl SFT file."""
    write_source((dump_record({"text": t}) for t in zh_texts(120)), tmp_path / "shards", "zh", shard_records=50)
    write_source((dump_record(r) for r in text_records(80, seed=3)), tmp_path / "shards", "en", shard_records=30)
    write_jsonl(tmp_path / "raw" / "qa.jsonl", [{"question": "长江有多长？", "answer": "约6300千米。"}] * 5)
    write_jsonl(tmp_path / "raw" / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是模型。"}]},
        {"unrelated": 1},
    ])
    return tmp_path


def test_reads_shard_dirs_globs_and_jsonl_with_a_per_source_cap(corpus):
    sentences, stats = collect_sentences([str(corpus / "shards"), str(corpus / "raw" / "*.jsonl")])
    assert stats.docs == {"en": 80, "zh": 120, "chat": 1, "qa": 5}
    assert stats.skipped["chat"] == 1
    assert "你好\n你好！我是模型。".split("\n") == [s for s in sentences if s.startswith("你好")]
    capped, capped_stats = collect_sentences([str(corpus / "shards" / "zh" / "*.jsonl.zst")], max_docs_per_source=7)
    assert capped_stats.docs == {"zh": 7}
    assert capped == zh_texts(120)[:7]  # the first N documents in shard order


def test_same_input_gives_the_same_model_with_llama_settings(corpus):
    sentences, _ = collect_sentences([str(corpus / "shards")])
    first = train_model(sentences, vocab_size=600)
    assert train_model(sentences, vocab_size=600) == first
    proto = _proto(first)
    assert proto.trainer_spec.model_type == sp_pb2.TrainerSpec.BPE
    assert proto.normalizer_spec.name == "identity"
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.split_digits
    assert proto.trainer_spec.allow_whitespace_only_pieces and not proto.normalizer_spec.remove_extra_whitespaces
    assert [proto.pieces[i].piece for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert sum(p.type == p.BYTE for p in proto.pieces) == 256
    sp = spm.SentencePieceProcessor(model_proto=first)
    assert sp.encode("2024", out_type=str) == ["▁", "2", "0", "2", "4"]  # digits split
    text = "长江 is  long\t😀 ok"
    assert sp.decode(sp.encode(text)) == text  # whitespace kept, emoji via bytes


def test_unigram_and_user_symbols(corpus):
    sentences, _ = collect_sentences([str(corpus / "shards")])
    model = train_model(sentences, vocab_size=600, model_type="unigram", user_symbols=("<tool>",))
    assert _proto(model).trainer_spec.model_type == sp_pb2.TrainerSpec.UNIGRAM
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert "<tool>" in sp.encode("调用<tool>工具", out_type=str)


def test_vocab_smaller_than_the_alphabet_is_a_clear_error(corpus):
    sentences, _ = collect_sentences([str(corpus / "shards")])
    with pytest.raises(TokenizerError, match="smaller than the alphabet.*needs at least"):
        train_model(sentences, vocab_size=100)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(TokenizerError, match="matches no file"):
        collect_sentences([str(tmp_path / "missing" / "*.jsonl")])
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "{not json"])
    with pytest.raises(TokenizerError, match=r"bad\.jsonl:2: not valid JSON"):
        collect_sentences([str(tmp_path / "bad.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="no shards"):
        collect_sentences([str(tmp_path / "empty")])
    save_model(train_model(zh_texts(50), vocab_size=600), tmp_path / "out")
    with pytest.raises(TokenizerError, match="already exists"):
        output_paths(tmp_path / "out")


def test_cli_writes_model_and_vocab_and_fails_cleanly(corpus):
    script = [sys.executable, str(ROOT / "utils" / "train_tokenizer.py")]
    ok = subprocess.run(script + ["--data", str(corpus / "shards"), "--vocab-size", "600",
                                  "--output", str(corpus / "out" / "sp")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "sample:" in ok.stdout and "decoded:" in ok.stdout
    assert sorted(p.name for p in (corpus / "out").iterdir()) == ["sp.model", "sp.vocab"]
    small = subprocess.run(script + ["--data", str(corpus / "shards"), "--vocab-size", "50",
                                     "--output", str(corpus / "out" / "small")], capture_output=True, text=True)
    assert small.returncode == 2
    assert small.stderr.startswith("error: --vocab-size 50") and len(small.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in (corpus / "out").iterdir()) == ["sp.model", "sp.vocab"]  # nothing half-written
