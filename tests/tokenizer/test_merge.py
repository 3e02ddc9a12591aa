"""Merging new pieces into a base tokenizer: old ids kept, new pieces atomic, lossless round trip, report."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import AutoTokenizer

from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir
from llms_trainer.tokenizer.merge import merge_reachable, merge_tokenizer, read_proto
from llms_trainer.tokenizer.train import train_model
from tests.helpers import EN_WORDS
from tests.tokenizer.support import MIXED_TEXTS, zh_texts

Piece = sp_pb2.ModelProto.SentencePiece
ENGLISH = ("The model reads data from many sources.", "Optimizer updates weights step by step on 2 cores.",
           " ".join(EN_WORDS))


def test_old_ids_keep_their_pieces_and_new_pieces_rank_below(tiny_tokenizer_dir, zh_model_path, merged_dir):
    base, merged = read_proto(tiny_tokenizer_dir / "tokenizer.model"), read_proto(merged_dir / "tokenizer.model")
    n_base = len(base.pieces)
    assert [(p.piece, p.score, p.type) for p in merged.pieces[:n_base]] == [
        (p.piece, p.score, p.type) for p in base.pieces]
    new = merged.pieces[n_base:]
    assert len(new) > 50
    assert max(p.score for p in new) < min(p.score for p in base.pieces if p.type == Piece.NORMAL)
    pieces = [p.piece for p in merged.pieces]
    assert len(set(pieces)) == len(pieces)  # no duplicates: bytes, controls and shared pieces appear once
    assert all(p.type in (Piece.NORMAL, Piece.USER_DEFINED) for p in new)
    hf = AutoTokenizer.from_pretrained(str(merged_dir))
    assert len(hf) == len(pieces)
    assert hf.convert_ids_to_tokens(list(range(len(pieces)))) == pieces


def test_every_new_piece_encodes_to_a_single_id(tiny_tokenizer_dir, merged_dir):
    n_base = len(read_proto(tiny_tokenizer_dir / "tokenizer.model").pieces)
    hf = AutoTokenizer.from_pretrained(str(merged_dir))
    bpe = hf.backend_tokenizer.model
    for token_id in range(n_base, len(hf)):
        piece = hf.convert_ids_to_tokens(token_id)
        assert [t.id for t in bpe.tokenize(piece)] == [token_id], piece
        if piece.startswith("▁"):  # as a word of its own in running text
            assert token_id in hf.encode("x " + piece[1:] + " y", add_special_tokens=False), piece


def test_round_trip_and_hf_agrees_with_sentencepiece(merged_dir):
    hf = AutoTokenizer.from_pretrained(str(merged_dir))
    sp = spm.SentencePieceProcessor(model_file=str(merged_dir / "tokenizer.model"))
    for text in (*MIXED_TEXTS, *zh_texts(20, seed=5)):
        ids = hf.encode(text, add_special_tokens=False)
        assert hf.decode(ids) == text
        assert ids == sp.encode(text)


def test_chinese_gets_shorter_and_english_is_unchanged(tiny_tokenizer_dir, merged_dir, held_out_zh):
    before = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    after = AutoTokenizer.from_pretrained(str(merged_dir))
    for text in ENGLISH:
        assert after.encode(text) == [after.bos_token_id] + before.encode(text, add_special_tokens=False)
    report = json.loads((merged_dir / "merge_report.json").read_text(encoding="utf-8"))
    assert report["final_size"] == report["base_size"] + report["added"] == len(after)
    assert report["report_text"] == str(held_out_zh)
    text = held_out_zh.read_text(encoding="utf-8").splitlines()
    assert report["before"]["tokens"] == sum(len(before.encode(t, add_special_tokens=False)) for t in text)
    assert report["after"]["tokens"] == sum(len(after.encode(t, add_special_tokens=False)) for t in text)
    assert report["after"]["chars_per_token"] > 1.5 * report["before"]["chars_per_token"]


def _toy_bpe(pieces: list[str]) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.unk_id = 0
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.pieces.add(piece="<unk>", score=0, type=Piece.UNKNOWN)
    for rank, piece in enumerate(pieces):
        proto.pieces.add(piece=piece, score=-rank, type=Piece.NORMAL)
    return proto


def test_pieces_blocked_by_base_merges_are_dropped():
    # The base merges b+c first, so "abcd" (built as ab+cd in the new model) can never form.
    base = _toy_bpe(["bc", "a", "b", "c", "d"])
    add = _toy_bpe(["ab", "cd", "abcd", "a", "b", "c", "d"])
    merged, appended, skipped, dropped = merge_reachable(base, add)
    assert appended == ["ab", "cd"] and skipped == 4 and dropped == 1
    sp = spm.SentencePieceProcessor(model_proto=merged.SerializeToString())
    assert sp.encode("abcd", out_type=str) == ["a", "bc", "d"]  # base merges keep priority
    assert sp.encode("ab", out_type=str) == ["ab"]


def test_hf_fast_base_gets_new_pieces_as_clean_unique_tokens(tmp_path, zh_model_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator([*ENGLISH * 20, "数据 模型"], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|eos|>"]))
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>").save_pretrained(str(tmp_path / "base"))
    base = AutoTokenizer.from_pretrained(str(tmp_path / "base"))
    report = merge_tokenizer(tmp_path / "base", zh_model_path, tmp_path / "out")
    merged = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert report["kind"] == "hf_tokens" and report["final_size"] == len(merged) == len(base) + report["added"] + 1
    assert report["special_added"] == ["<|pad|>"] == [merged.pad_token]  # no unk to reuse: a pad of its own
    assert merged.convert_ids_to_tokens(len(merged) - 1) == "<|pad|>" and merged.bos_token is None
    ids = list(range(len(base)))
    assert merged.convert_ids_to_tokens(ids) == base.convert_ids_to_tokens(ids)
    assert not (tmp_path / "out" / "tokenizer.model").exists()  # not a SentencePiece tokenizer
    added = [merged.convert_ids_to_tokens(i) for i in range(len(base), len(merged) - 1)]
    assert len(added) > 50 and len(set(added)) == len(added)
    assert all(t.strip() == t and t for t in added)
    assert "数据" not in added  # already one token in the base
    for token in added:
        assert merged.encode(token) == [merged.convert_tokens_to_ids(token)]
    for text in MIXED_TEXTS:
        assert merged.decode(merged.encode(text)) == text


def test_bad_inputs_write_nothing(tmp_path, tiny_tokenizer_dir, zh_model_path, merged_dir):
    out = tmp_path / "out"
    (tmp_path / "not_a_tokenizer").mkdir()
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    cases = [
        (tmp_path / "missing.model", zh_model_path, "no such file"),
        (tmp_path / "not_a_tokenizer", zh_model_path, "neither a SentencePiece .model file nor an HF tokenizer dir"),
        (tmp_path / "notes.txt", zh_model_path, "not a SentencePiece .model"),
        (tiny_tokenizer_dir, tmp_path / "notes.txt", "not a SentencePiece .model"),
    ]
    for base, add, message in cases:
        with pytest.raises(TokenizerError, match=message):
            merge_tokenizer(base, add, out)
    with pytest.raises(TokenizerError, match="already exists"):
        merge_tokenizer(tiny_tokenizer_dir, zh_model_path, merged_dir)
    unigram = tmp_path / "uni.model"
    unigram.write_bytes(train_model(zh_texts(300), vocab_size=600, model_type="unigram"))
    with pytest.raises(TokenizerError, match="cannot be merged into a bpe base"):
        merge_tokenizer(tiny_tokenizer_dir, unigram, out)
    # a tokenizer.json with extra tokens beyond its tokenizer.model would get clashing ids
    add_chat_tokens_to_dir(tiny_tokenizer_dir, tmp_path / "with_chat")
    shutil.copy(tiny_tokenizer_dir / "tokenizer.model", tmp_path / "with_chat" / "tokenizer.model")
    with pytest.raises(TokenizerError, match="merge into the plain SentencePiece model first"):
        merge_tokenizer(tmp_path / "with_chat", zh_model_path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_tokenizer", "notes.txt", "uni.model", "with_chat"]


def _add_model(path, base: sp_pb2.ModelProto, pieces: list[str]) -> None:
    """A BPE .model holding `pieces` in rank order (scores -1, -2, ...), with the base's settings."""
    proto = sp_pb2.ModelProto()
    proto.CopyFrom(base)
    del proto.pieces[:]
    proto.pieces.add(piece="<unk>", score=0, type=Piece.UNKNOWN)
    for rank, piece in enumerate(pieces, 1):
        proto.pieces.add(piece=piece, score=-rank, type=Piece.NORMAL)
    path.write_bytes(proto.SerializeToString())


def test_tokenizer_model_and_json_agree_when_the_base_scores_a_piece_minus_1e9(tmp_path):
    # Mistral scores its whitespace pieces -1e9. Near -1e9 float32 steps are 64 apart, so "trained score +
    # shift" tied new pieces; and transformers ranks converted merges by id, SentencePiece by score.
    base = _toy_bpe(["ab", "bc", "▁", "a", "b", "c"])
    base.normalizer_spec.add_dummy_prefix = True
    base.trainer_spec.bos_id = base.trainer_spec.eos_id = -1
    base.pieces[1].score = -1e9  # "ab": id before "bc", score below it
    (tmp_path / "base.model").write_bytes(base.SerializeToString())
    _add_model(tmp_path / "add.model", base, ["人不", "别人", "不敢", "别", "人", "不", "敢"])
    texts = ["abc", "别人不敢", "abc别人不敢 bcab", "ab 别人 不敢 c"]
    (tmp_path / "held_out.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    report = merge_tokenizer(tmp_path / "base.model", tmp_path / "add.model", tmp_path / "out",
                             tmp_path / "held_out.txt")
    new_scores = [p.score for p in read_proto(tmp_path / "out" / "tokenizer.model").pieces[len(base.pieces):]]
    assert len(new_scores) == 7 and new_scores[0] < -1e9
    assert all(a > b for a, b in zip(new_scores, new_scores[1:], strict=False))  # distinct, in trained order
    assert all(float(np.float32(s)) == s for s in new_scores)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == sp.encode(text), text
    assert hf.tokenize("abc") == ["▁", "a", "bc"]  # the base's scores rank merges, not its ids
    assert hf.tokenize("别人不敢") == ["▁", "别", "人不", "敢"]  # 人不 was learnt before 别人
    assert report["sentencepiece_mismatches"] == 0
