"""Fixtures for the tokenizer toolkit: a Chinese SentencePiece model, a merged tokenizer, a chat tokenizer."""

from __future__ import annotations

import pytest

from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir
from llms_trainer.tokenizer.merge import merge_tokenizer
from llms_trainer.tokenizer.train import train_model
from tests.tokenizer.support import zh_texts


@pytest.fixture(scope="session")
def zh_model_path(tmp_path_factory):
    """A 500-piece Chinese BPE (.model) trained with the toolkit's Llama settings."""
    path = tmp_path_factory.mktemp("zh") / "zh.model"
    path.write_bytes(train_model(zh_texts(600), vocab_size=500))
    return path


@pytest.fixture(scope="session")
def held_out_zh(tmp_path_factory):
    path = tmp_path_factory.mktemp("held") / "held_out.txt"
    path.write_text("\n".join(zh_texts(40, seed=99)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def merged_dir(tmp_path_factory, tiny_tokenizer_dir, zh_model_path, held_out_zh):
    """tiny_tokenizer_dir (an HF dir with tokenizer.model) + the Chinese pieces."""
    out = tmp_path_factory.mktemp("merge") / "merged"
    merge_tokenizer(tiny_tokenizer_dir, zh_model_path, out, held_out_zh)
    return out


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory, merged_dir):
    out = tmp_path_factory.mktemp("chat") / "chat"
    add_chat_tokens_to_dir(merged_dir, out)
    return out
