"""A 2-process DeepSpeed ZeRO-2 GRPO launch (train_rl.sh): each process samples its own prompts' groups,
rewards are gathered for the advantages, the reference's KL starts at 0, the greedy eval splits and gathers
the held-out prompts, checkpoints come between rollouts and load with transformers."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.train.rl_support import chat_model_config, chat_tokenizer_dir, grpo_config, write_prompts
from tests.train.test_distributed import ACC, ROOT, check, free_port, launch_env

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here
pytestmark = [pytest.mark.dist, pytest.mark.slow]


def test_grpo_under_zero2_on_two_processes(tmp_path, chat_tokenizer_dir, chat_model_config):
    from transformers import AutoModelForCausalLM

    held = write_prompts(tmp_path / "held.jsonl", 3, seed=9)  # odd: one process generates a padding copy
    config = grpo_config(tmp_path, chat_tokenizer_dir, "zero2",
                         {"beta": 0.05, "num_iterations": 2, "eval_prompts": str(held)},
                         train={"num_training_steps": 4, "train_batch_size": 8, "train_and_eval": True},
                         save_interval=1, eval_interval=4)
    check(subprocess.run(["sh", str(ROOT / "train_rl.sh"), str(ACC / "ds_stage2_cpu.yaml"), str(config),
                          str(chat_model_config)], cwd=ROOT, env=launch_env(MAIN_PROCESS_PORT=str(free_port())),
                         capture_output=True, text=True, timeout=420))
    work = tmp_path / "zero2"
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if "train/loss" in r}
    assert sorted(train) == [1, 2, 3, 4]
    assert train[1]["train/kl"] == pytest.approx(0.0, abs=1e-7)
    assert train[1]["train/reward"] == train[2]["train/reward"]  # one rollout, two optimizer steps
    assert sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*")) == [2, 4]  # between rollouts
    saved = json.loads((work / "grpo_eval" / "step_4.json").read_text())
    assert [r["prompt"] for r in saved] == [json.loads(line)["prompt"] for line in held.read_text().splitlines()]
    states = [json.loads((work / "checkpoint-4" / "trainer_state" / f"stage_rank{r}.json").read_text())
              for r in (0, 1)]
    assert states[0]["stream"]["draws"] == states[1]["stream"]["draws"] == 2
    assert states[0]["generator"] != states[1]["generator"]  # each process samples its own completions
    AutoModelForCausalLM.from_pretrained(work / "checkpoint-4")
