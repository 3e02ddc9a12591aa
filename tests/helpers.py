"""Small builders shared by tests: corpora, tokenizers, tiny models."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

EN_WORDS = ("the model reads data from many sources and learns to predict the next token while the "
            "optimizer updates weights step by step on a small machine with two cores").split()
ZH_CHARS = "模型读取数据来源学习预测下一个词优化器更新权重在小机器上训练语言中文英文混合测试"


def sentence(rng: random.Random, chinese: bool = False) -> str:
    """A random sentence of English words or Chinese characters."""
    if chinese:
        return "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(8, 30))) + "。"
    return " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(5, 20))).capitalize() + "."


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw strings written verbatim) as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            fh.write("\n")
    return path


def text_records(n: int, seed: int = 0, field: str = "text", chinese: bool = False) -> list[dict]:
    rng = random.Random(seed)
    return [{field: " ".join(sentence(rng, chinese) for _ in range(rng.randint(1, 6))) + f" #{i}"}
            for i in range(n)]


def train_sentencepiece(out_dir: Path, texts: list[str], vocab_size: int = 700) -> Path:
    """Train a Llama-style SentencePiece BPE model and save it as an HF tokenizer dir (+ tokenizer.model)."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def tokenizer_corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng, chinese=i % 2 == 1) + " 0123456789" for i in range(n)]

