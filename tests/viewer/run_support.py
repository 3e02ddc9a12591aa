"""A real pretraining run for the feedback tab: two sources with held-out records, evals every 2 steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llms_trainer.data.compress import compress_sources, expand_inputs
from tests.helpers import text_records, write_jsonl
from tests.train.conftest import tiny_llama


@pytest.fixture(scope="session")
def feedback_run(tmp_path_factory, tiny_tokenizer_dir, tiny_tokenizer) -> Path:
    """work_dir of an 8-step run over `news` and `wiki` (policy 1:3) with 6 held-out records each."""
    from accelerate.state import AcceleratorState, GradientState

    from llms_trainer.train.run import run

    root = tmp_path_factory.mktemp("feedback_run")
    write_jsonl(root / "raw/news.jsonl", text_records(60, seed=2))
    write_jsonl(root / "raw/wiki.jsonl", text_records(90, seed=1))
    compress_sources(expand_inputs([str(root / "raw/*.jsonl")], None), root / "shards", shard_records=30)
    (root / "policy.json").write_text(json.dumps({"news": 1, "wiki": 3}))
    (root / "model.json").write_text(json.dumps(tiny_llama(len(tiny_tokenizer))))
    config = {"data": {"mode": "pretrain", "data": {"news": str(root / "shards/news"), "wiki": str(root / "shards/wiki")},
                       "sample_policy_file": str(root / "policy.json"), "concat_multiple_sequence": True,
                       "seq_length": 32, "tokenizer_path": str(tiny_tokenizer_dir)},
              "train": {"train_batch_size": 4, "num_training_steps": 8, "num_warmup_steps": 1, "lr": 5e-3,
                        "ckpt": None, "seed": 7, "mixed_precision": "no", "train_and_eval": True},
              "eval": {"source_holdout_records": 6},
              "log_interval": 1, "eval_interval": 2, "save_interval": 100, "work_dir": str(root / "run")}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    try:
        run(root / "run.yaml", [], str(root / "model.json"))
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return root / "run"
