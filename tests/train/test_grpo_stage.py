"""GRPO stage: KL 0 and no clipping on the first pass, a rule reward learned while the same run with advantages
shuffled across the batch stays flat, a trained reward model with another tokenizer (scores through text,
normalised, greedy eval saved, loadable checkpoint), saves between rollouts and exact resume (mid-rollout
too)."""

from __future__ import annotations

import json

import pytest
import torch

from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.stages import grpo
from tests.train.reward_support import reward_config
from tests.train.rl_support import (
    chat_model_config,
    chat_tokenizer_dir,
    grpo_config,
    step_metrics,
    train,
    write_pairs,
    write_prompts,
)

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_kl_is_zero_and_nothing_is_clipped_on_the_first_pass(tmp_path, chat_tokenizer_dir, chat_model_config):
    rules = {"reward_funcs": [{"name": f"{tmp_path / 'rules.py'}:text_length"}]}
    config = grpo_config(tmp_path, chat_tokenizer_dir, "kl", {"beta": 0.1, "num_iterations": 2, **rules},
                         train={"num_training_steps": 2, "lr": 1e-2})
    _, logger = train(config, chat_model_config)
    first, second = logger.rows[0][1], logger.rows[1][1]
    assert first["train/kl"] == pytest.approx(0.0, abs=1e-7)  # policy == reference
    assert first["train/clip_ratio/region_mean"] == 0.0  # ratio 1: the old log-probs are the policy's own
    assert first["train/frac_reward_zero_std"] < 1  # some group has a signal, so the policy moves
    assert second["train/kl"] > 0  # the second pass over the same rollout, after one update
    assert first["train/reward"] == second["train/reward"]  # the same rollout
    assert 0 < first["train/completions/mean_length"] <= 4 and "train/frac_reward_zero_std" in first


def test_a_rule_reward_is_learned_while_shuffled_advantages_stay_flat(tmp_path, chat_tokenizer_dir,
                                                                     chat_model_config, monkeypatch):
    steps = {"train": {"num_training_steps": 30}}
    _, logger = train(grpo_config(tmp_path, chat_tokenizer_dir, "learn", **steps), chat_model_config)
    rewards = list(step_metrics(logger, "train/reward").values())
    assert mean(rewards[-10:]) >= max(3 * mean(rewards[:10]), 0.6), rewards

    real = grpo.group_advantages

    def shuffled(rewards, num_generations, scale_rewards):  # the control: advantages unrelated to the samples
        advantages, flat = real(rewards, num_generations, scale_rewards)
        return advantages[torch.randperm(len(advantages), generator=torch.Generator().manual_seed(0))], flat

    monkeypatch.setattr(grpo, "group_advantages", shuffled)
    _, control = train(grpo_config(tmp_path, chat_tokenizer_dir, "control", **steps), chat_model_config)
    flat = list(step_metrics(control, "train/reward").values())
    # the vowel rate wanders around its base rate (about 0.1) without the reward's signal
    assert mean(flat[-10:]) < min(0.3, mean(rewards[-10:]) / 2), flat


def test_resume_is_exact_between_and_inside_rollouts(tmp_path, chat_tokenizer_dir, chat_model_config):
    section = {"beta": 0.05, "num_iterations": 2, "max_new_tokens": 6}
    full = grpo_config(tmp_path, chat_tokenizer_dir, "full", section, train={"num_training_steps": 4},
                       save_interval=1)
    reference = train(full, chat_model_config)[0].losses
    # due every step, written between rollouts only (each rollout serves 2 optimizer steps)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path / "full")] == [2, 4]
    resumed = train(full, chat_model_config, f"train.resume={tmp_path / 'full' / 'checkpoint-2'}",
                    f"work_dir={tmp_path / 'from2'}")[0].losses
    assert sorted(resumed) == [3, 4]  # rollout 2 sampled after the resume
    # a run that ends inside a rollout saves that rollout with its final checkpoint
    part = grpo_config(tmp_path, chat_tokenizer_dir, "part", section, train={"num_training_steps": 3})
    head = train(part, chat_model_config)[0].losses
    tail = train(part, chat_model_config, "train.num_training_steps=4")[0].losses
    assert sorted(tail) == [4]  # the second pass over the saved rollout
    for losses in (resumed, head, tail):
        for step, loss in losses.items():
            assert loss == pytest.approx(reference[step], abs=1e-6), (step, losses)


def test_a_trained_reward_model_with_another_tokenizer(tmp_path, chat_tokenizer_dir, chat_model_config,
                                                      tiny_tokenizer_dir, deterministic_model_config_file):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from llms_trainer.ops.scores import score_pairs

    pairs, held = write_pairs(tmp_path / "rm_pairs.jsonl", 32, 1), write_pairs(tmp_path / "rm_held.jsonl", 8, 2)
    rm_config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs)], [str(held)],
                              train={"num_training_epochs": None, "num_training_steps": 4})
    train(rm_config, deterministic_model_config_file)
    rm_path = tmp_path / "rm" / "checkpoint-4"
    stats = json.loads((rm_path / "config.json").read_text())
    eval_prompts = write_prompts(tmp_path / "eval_prompts.jsonl", 3, seed=5)
    config = grpo_config(tmp_path, chat_tokenizer_dir, "grpo_rm",
                         {"reward_model": str(rm_path), "normalize_reward_model": True, "reward_model_weight": 2.0,
                          "eval_prompts": str(eval_prompts)},
                         train={"num_training_steps": 2, "train_and_eval": True})
    _, logger = train(config, chat_model_config)
    metrics = {k: v for _, m in logger.rows for k, v in m.items()}
    assert {"train/rewards/reward_model", "train/rewards/vowel_start", "eval/grpo/rewards/reward_model",
            "eval/grpo/reward"} <= set(metrics)

    saved = json.loads((tmp_path / "grpo_rm" / "grpo_eval" / "step_2.json").read_text())
    assert len(saved) == 3
    rm_tokenizer = AutoTokenizer.from_pretrained(rm_path)
    assert len(rm_tokenizer) != len(AutoTokenizer.from_pretrained(chat_tokenizer_dir))  # no chat tokens
    rm = AutoModelForSequenceClassification.from_pretrained(rm_path, dtype=torch.float32).eval()
    scores = score_pairs(rm, rm_tokenizer, [r["prompt"] for r in saved], [r["completion"] for r in saved])
    for row, score in zip(saved, scores, strict=True):  # scored through text with the reward model's tokenizer
        normalised = (score - stats["reward_mean"]) / stats["reward_std"]
        assert row["rewards"]["reward_model"] == pytest.approx(normalised, abs=1e-4)
        assert row["reward"] == pytest.approx(2.0 * normalised + row["rewards"]["vowel_start"], abs=1e-4)
    assert metrics["eval/grpo/rewards/reward_model"] == pytest.approx(mean(r["rewards"]["reward_model"]
                                                                          for r in saved), abs=1e-5)

    policy = tmp_path / "grpo_rm" / "checkpoint-2"
    model = AutoModelForCausalLM.from_pretrained(policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    assert tokenizer.convert_tokens_to_ids("<|endofchat|>") in model.generation_config.eos_token_id
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": saved[0]["prompt"]}],
                                           add_generation_prompt=True, return_dict=True, return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
