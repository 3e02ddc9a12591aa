"""Shared fixtures: a tiny SentencePiece tokenizer trained once per session."""

from __future__ import annotations

import os

import pytest

from tests.helpers import tokenizer_corpus, train_sentencepiece

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """HF tokenizer dir (tokenizer.json + tokenizer.model) of a 700-piece Llama-style BPE."""
    return train_sentencepiece(tmp_path_factory.mktemp("tok") / "tiny", tokenizer_corpus())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
