"""Builders for reward-model tests: synthetic preference pairs and a small reward config."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from tests.helpers import EN_WORDS, write_jsonl
from tests.train.conftest import _merge

MARKER = "data"  # the selected response carries this word; the rejected one another word in its place
WORDS = [w for w in EN_WORDS if w != MARKER]


def preference_records(n: int, seed: int, shuffled: bool = False) -> list[dict]:
    """Pairs whose responses differ in one word: the marker (selected) or another word (rejected).

    `shuffled`: selected and rejected are swapped in a random half of the pairs (exactly half, so the marker
    says nothing about which side is preferred: a control without a learnable preference).
    """
    rng = random.Random(seed)
    swapped = set(rng.sample(range(n), n // 2)) if shuffled else set()
    records = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + "?"
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
        at = rng.randint(0, len(words))
        selected = " " + " ".join(words[:at] + [MARKER] + words[at:])
        rejected = " " + " ".join(words[:at] + [rng.choice(WORDS)] + words[at:])
        if i in swapped:
            selected, rejected = rejected, selected
        records.append({"prompt": prompt, "selected": selected, "rejected": rejected})
    return records


def write_pairs(path: Path, n: int, seed: int, shuffled: bool = False) -> Path:
    return write_jsonl(path, preference_records(n, seed, shuffled))


def reward_config(tmp_path: Path, tokenizer_dir: Path, name: str, train_files, eval_files=None, **changes) -> Path:
    """A reward-stage YAML for a tiny model from --model_config; `changes` merge into it."""
    cfg = {
        "stage": "reward",
        "data": {"reward_model_datasets": train_files, "seq_length": 64, "batch_size": 8,
                 "tokenizer_path": str(tokenizer_dir)},
        "train": {"num_training_epochs": 2, "num_warmup_steps": 2, "lr": 3e-3, "min_lr": 3e-4, "ckpt": None,
                  "seed": 7, "mixed_precision": "no", "train_and_eval": eval_files is not None},
        "log_interval": 1, "eval_interval": 1000, "save_interval": 1000, "work_dir": str(tmp_path / name),
    }
    if eval_files is not None:
        cfg["eval"] = {"test_reward_model_acc_files": eval_files, "batch_size": 16}
    cfg = _merge(cfg, changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
