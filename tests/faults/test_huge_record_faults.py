"""A 5 MB SFT record on one line, through the real script: its message is cut before encoding to
`ChatEncoder.max_content_chars` (2 × seq_length × longest-token characters), so it costs what a message of
that length does, and the run trains exactly as on the same record cut by hand to 8 × seq_length characters
(still too long to fit: every token a row keeps lies before either cut)."""
# ruff: noqa: F811 - fixtures imported from other test modules are used as arguments

from __future__ import annotations

import random

import pytest

from llms_trainer.data.sft import ChatEncoder
from llms_trainer.data.shards import dump_record, write_source
from tests.faults.support import logged
from tests.faults.test_stage_data_faults import chat_model_config, chat_tokenizer_dir, chats, sft_config  # noqa: F401
from tests.helpers import EN_WORDS
from train_llms import main as train_llms


def test_a_5_mb_reply_trains_as_the_same_reply_cut_by_hand(tmp_path, chat_tokenizer_dir, chat_model_config):
    from transformers import AutoTokenizer

    rng = random.Random(5)
    reply = " ".join(rng.choices(EN_WORDS, k=1_000_000))[:5_000_000]
    assert len(reply.encode()) == 5_000_000
    bound = ChatEncoder(AutoTokenizer.from_pretrained(str(chat_tokenizer_dir)), 64).max_content_chars
    assert 8 * 64 < bound < len(reply) // 1000
    records = chats(40)
    runs = {}
    for name, text in (("huge", reply), ("cut", reply[:8 * 64])):  # seq_length 64
        records[4] = {"messages": [{"role": "user", "content": "Tell me everything."},
                                   {"role": "assistant", "content": text}]}
        write_source((dump_record(r) for r in records), tmp_path / name, "chats", shard_records=None,
                     shard_bytes=None)
        config = sft_config(tmp_path, chat_tokenizer_dir, tmp_path / name / "chats", name)
        assert train_llms(["--train_config", str(config), "--model_config", str(chat_model_config),
                           "train.num_training_steps=6"]) == 0
        runs[name] = logged(tmp_path / name, "train/loss")
    assert sorted(runs["huge"]) == list(range(1, 7))
    for step, loss in runs["huge"].items():
        assert loss == pytest.approx(runs["cut"][step], abs=1e-6), step
    assert logged(tmp_path / "huge", "data/chats/truncated")[6] == logged(tmp_path / "cut", "data/chats/truncated")[6] == 1
