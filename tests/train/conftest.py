"""Fixtures for engine tests: a sharded corpus, a tiny Llama config, and a config-file writer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from llms_trainer.data.shards import dump_record, write_source
from tests.helpers import sentence


def long_docs(n: int, seed: int, chinese: bool = False) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(sentence(rng, chinese) for _ in range(rng.randint(2, 6))) + f" #{i}"}
            for i in range(n)]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Shards of two sources: `en` (120 docs, 3 shards) and `zh` (60 docs, 1 shard)."""
    root = tmp_path_factory.mktemp("corpus")
    write_source((dump_record(r) for r in long_docs(120, 1)), root, "en", shard_records=40, shard_bytes=None)
    write_source((dump_record(r) for r in long_docs(60, 2, chinese=True)), root, "zh", shard_records=None)
    return root


def tiny_llama(vocab_size: int, **changes) -> dict:
    """config.json keys of a tiny Llama (hidden 64, 2 layers)."""
    return {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
            "vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
            **changes}


@pytest.fixture(scope="session")
def model_config_file(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama sized to the tiny tokenizer, with attention dropout (so training uses the RNG)."""
    path = tmp_path_factory.mktemp("model") / "tiny_llama.json"
    path.write_text(json.dumps(tiny_llama(len(tiny_tokenizer), attention_dropout=0.1)))
    return path


@pytest.fixture(scope="session")
def deterministic_model_config_file(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny Llama without dropout: its loss depends on the batch contents only, not on RNG draws."""
    path = tmp_path_factory.mktemp("model") / "tiny_llama_no_dropout.json"
    path.write_text(json.dumps(tiny_llama(len(tiny_tokenizer))))
    return path


def _merge(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def write_config(tmp_path, corpus_dir, tiny_tokenizer_dir):
    """write_config(name, sources=None, **sections) → path of a small pretraining YAML.

    `changes` are merged into the base config; `sources` replaces data.data.
    """
    def write(name: str = "run", sources: dict | None = None, **changes) -> Path:
        cfg = {
            "data": {"mode": "pretrain", "data": {"en": str(corpus_dir / "en"), "zh": str(corpus_dir / "zh")},
                     "concat_multiple_sequence": True, "seq_length": 32,
                     "tokenizer_path": str(tiny_tokenizer_dir)},
            "train": {"train_batch_size": 2, "num_training_steps": 6, "num_warmup_steps": 1, "lr": 5e-3,
                      "min_lr": 5e-4, "weight_decay": 0.1, "ckpt": None, "seed": 7, "mixed_precision": "no"},
            "log_interval": 1, "eval_interval": 100, "save_interval": 100,
            "work_dir": str(tmp_path / name),
        }
        cfg = _merge(cfg, changes)
        if sources is not None:
            cfg["data"]["data"] = sources
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


class RecordingLogger:
    """Keeps logged metrics in memory (the engine's logger interface: start_at + log + plot)."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []
        self.plots = 0
        self.started_at: int | None = None

    def start_at(self, step: int) -> None:
        self.started_at = step

    def log(self, step: int, metrics: dict) -> None:
        self.rows.append((step, dict(metrics)))

    def plot(self) -> None:
        self.plots += 1


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each run builds its own Accelerator; forget the process-wide accelerate singletons afterwards."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
