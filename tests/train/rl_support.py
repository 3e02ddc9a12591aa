"""Builders for DPO/GRPO tests: a tiny chat tokenizer and model config, pair and prompt files, RL configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_jsonl
from tests.train.conftest import RecordingLogger, _merge, tiny_llama
from tests.train.reward_support import preference_records


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """The tiny tokenizer with the chat tokens and template (utils/add_chat_tokens.py)."""
    from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir

    out = tmp_path_factory.mktemp("rl_chat") / "tok"
    add_chat_tokens_to_dir(tiny_tokenizer_dir, out)
    return out


@pytest.fixture(scope="session")
def chat_model_config(tmp_path_factory, chat_tokenizer_dir) -> Path:
    """A tiny Llama (no dropout) sized to the chat tokenizer."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("rl_model") / "tiny_chat_llama.json"
    path.write_text(json.dumps(tiny_llama(len(AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))))))
    return path


def write_pairs(path: Path, n: int, seed: int, shuffled: bool = False) -> Path:
    return write_jsonl(path, preference_records(n, seed, shuffled))


def rl_config(tmp_path: Path, tokenizer_dir: Path, name: str, stage: str, section: dict, **changes) -> Path:
    """A dpo/grpo YAML for a tiny model from --model_config; `changes` merge into it."""
    cfg = {
        "stage": stage, stage: section,
        "data": {"seq_length": 64, "tokenizer_path": str(tokenizer_dir)},
        "train": {"train_batch_size": 4, "num_training_steps": 6, "num_warmup_steps": 0, "lr": 1e-3,
                  "min_lr": 1e-4, "ckpt": None, "seed": 7, "mixed_precision": "no", "weight_decay": 0.0},
        "log_interval": 1, "eval_interval": 1000, "save_interval": 1000, "work_dir": str(tmp_path / name),
    }
    cfg = _merge(cfg, changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(config: Path, model_config: Path, *overrides: str):
    """run() in this process: (TrainResult, RecordingLogger)."""
    from llms_trainer.train.run import run

    logger = RecordingLogger()
    return run(config, list(overrides), str(model_config), logger=logger), logger


def step_metrics(logger: RecordingLogger, name: str) -> dict[int, float]:
    return {step: m[name] for step, m in logger.rows if name in m}


VOWEL_RULE = '''def vowel_start(prompts, completions, **columns):
    """1 when the completion's first letter is a vowel (a few percent of a random tiny model's first tokens)."""
    return [1.0 if c.lstrip()[:1].lower() in "aeiou" else 0.0 for c in completions]


def text_length(prompts, completions, **columns):
    """Characters of the completion: differs within almost every group."""
    return [float(len(c)) for c in completions]
'''


def write_prompts(path: Path, n: int, seed: int = 0, **columns) -> Path:
    """{"prompt": a few words} records (+ the given constant columns)."""
    import random

    from tests.helpers import EN_WORDS

    rng = random.Random(seed)
    return write_jsonl(path, [{"prompt": " ".join(rng.choice(EN_WORDS) for _ in range(5)), **columns}
                              for _ in range(n)])


def grpo_config(tmp_path: Path, tokenizer_dir: Path, name: str, section: dict | None = None, **changes) -> Path:
    """GRPO on 20 prompts with the vowel rule reward: 2 prompts × 8 completions of at most 4 tokens per step."""
    rules = tmp_path / "rules.py"
    rules.write_text(VOWEL_RULE)
    base = {"prompts": str(write_prompts(tmp_path / "prompts.jsonl", 20)), "num_generations": 8,
            "max_new_tokens": 4, "reward_funcs": [{"name": f"{rules}:vowel_start"}]}
    changes.setdefault("train", {})
    changes["train"] = {"train_batch_size": 16, "lr": 3e-2, "lr_scheduler_type": "constant_with_warmup",
                        **changes["train"]}
    return rl_config(tmp_path, tokenizer_dir, name, "grpo", {**base, **(section or {})}, **changes)
