"""A 2-process DeepSpeed ZeRO-2 reward run (train_reward_model.sh) equals one process at the same global batch:
process r takes pairs r, r+2, ... of each micro-batch span, so a step holds the same pairs either way; the
eval splits the held-out pairs across the processes and gathers them back in order."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from llms_trainer.data.pairs import read_pairs
from llms_trainer.ops.scores import score_pairs
from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger
from tests.train.reward_support import reward_config, write_pairs
from tests.train.test_distributed import ACC, ROOT, check, free_port, launch_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def checkpoint_scores(path, pairs_file) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    pairs, _ = read_pairs([str(pairs_file)])
    return score_pairs(model, AutoTokenizer.from_pretrained(path), [p.prompt for p in pairs],
                       [p.selected for p in pairs])


def test_zero2_on_two_processes_equals_one_process(tmp_path, tiny_tokenizer_dir, deterministic_model_config_file):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 30, 6)
    held = write_pairs(tmp_path / "held.jsonl", 7, 7)  # odd: one process scores a padding copy, dropped after gather
    steps = {"num_training_steps": 5, "num_training_epochs": None, "gradient_accumulation_steps": 2,
             "num_warmup_steps": 2}
    evals = {"save_delta_scores": True, "batch_size": 2}
    single = reward_config(tmp_path, tiny_tokenizer_dir, "single", [str(pairs)], [str(held)], data={"batch_size": 2},
                           train=steps, eval=evals)
    reference = run(single, [], str(deterministic_model_config_file), logger=RecordingLogger()).losses

    launched = reward_config(tmp_path, tiny_tokenizer_dir, "zero2", [str(pairs)], [str(held)], data={"batch_size": 1},
                             train=steps, eval=evals)
    check(subprocess.run(["sh", str(ROOT / "train_reward_model.sh"), str(ACC / "ds_stage2_cpu.yaml"), str(launched),
                          str(deterministic_model_config_file)], cwd=ROOT, env=launch_env(MAIN_PROCESS_PORT=str(free_port())),
                         capture_output=True, text=True, timeout=420))
    rows = [json.loads(line) for line in (tmp_path / "zero2" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == [1, 2, 3, 4, 5]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=1e-5)
    assert reference[5] != pytest.approx(reference[1], abs=1e-3)  # it trained
    deltas = [json.loads((tmp_path / run / "delta_scores" / "step_5.json").read_text())["deltas"]["held"]
              for run in ("single", "zero2")]
    assert len(deltas[1]) == 7 and deltas[1] == pytest.approx(deltas[0], abs=1e-4)
    assert checkpoint_scores(tmp_path / "zero2" / "checkpoint-5", pairs) == pytest.approx(
        checkpoint_scores(tmp_path / "single" / "checkpoint-5", pairs), abs=1e-4)
