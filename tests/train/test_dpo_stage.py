"""DPO stage: ln 2 and zero rewards at step 0 (a frozen copy and LoRA with adapters off as the reference), the
held-out reward margin rises while a control trained on shuffled preferences stays near 0, exact resume,
precomputed reference log-probs train alike, and truncation drops pairs instead of scoring empty responses."""

from __future__ import annotations

import math

import pytest

from llms_trainer.data.pairs import read_pairs
from tests.train.rl_support import (
    chat_model_config,
    chat_tokenizer_dir,
    rl_config,
    step_metrics,
    train,
    write_pairs,
)

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here


def dpo_config(tmp_path, tokenizer_dir, name, shuffled=False, **changes):
    """64 training pairs (selected = the response with the marker word) and 32 held-out pairs (never shuffled)."""
    pairs = write_pairs(tmp_path / f"{name}_pairs.jsonl", 64, 1, shuffled)
    held = write_pairs(tmp_path / f"{name}_held.jsonl", 32, 2)
    section = {"datasets": str(pairs), "eval_datasets": {"held": str(held)}, "beta": 0.1}
    return rl_config(tmp_path, tokenizer_dir, name, "dpo", section, **changes)


@pytest.mark.parametrize("lora", [False, True], ids=["frozen copy", "lora adapters off"])
def test_step_0_loss_is_ln2_and_rewards_are_zero(tmp_path, chat_tokenizer_dir, chat_model_config, lora):
    config = dpo_config(tmp_path, chat_tokenizer_dir, "zero", train={"num_training_steps": 1, "use_lora": lora})
    result, logger = train(config, chat_model_config)
    first = logger.rows[0][1]
    assert result.losses[1] == pytest.approx(math.log(2), abs=1e-7)  # policy == reference: h = 0
    assert first["train/rewards/chosen"] == 0.0 and first["train/rewards/rejected"] == 0.0
    assert first["train/rewards/margins"] == 0.0 and first["train/logps/chosen"] < 0


def test_held_out_margin_rises_while_a_shuffled_control_stays_near_zero(tmp_path, chat_tokenizer_dir,
                                                                       chat_model_config):
    steps = {"train": {"num_training_steps": 30, "lr": 3e-3, "train_and_eval": True}, "eval_interval": 10}
    _, logger = train(dpo_config(tmp_path, chat_tokenizer_dir, "learn", **steps), chat_model_config)
    margins = step_metrics(logger, "eval/dpo/held/rewards/margins")
    assert sorted(margins) == [10, 20, 30]
    assert 0 < margins[10] < margins[20] < margins[30] and margins[30] > 1.0, margins
    assert step_metrics(logger, "eval/dpo/held/rewards/accuracies")[30] >= 0.9
    assert step_metrics(logger, "train/rewards/accuracies")[30] == 1.0

    _, control = train(dpo_config(tmp_path, chat_tokenizer_dir, "control", shuffled=True, **steps), chat_model_config)
    held = step_metrics(control, "eval/dpo/held/rewards/margins")
    assert all(abs(m) < 0.25 for m in held.values()), held  # the learning run reaches > 1
    assert step_metrics(control, "eval/dpo/held/rewards/accuracies")[30] < 0.8


def test_resume_continues_exactly_and_precomputed_reference_logps_train_alike(tmp_path, chat_tokenizer_dir,
                                                                            chat_model_config):
    config = dpo_config(tmp_path, chat_tokenizer_dir, "full", save_interval=3)
    reference = train(config, chat_model_config)[0].losses
    resumed = train(config, chat_model_config, f"train.resume={tmp_path / 'full' / 'checkpoint-3'}",
                    f"work_dir={tmp_path / 'again'}")[0].losses
    assert sorted(resumed) == [4, 5, 6]
    for step in resumed:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)
    precomputed = train(config, chat_model_config, "dpo.precompute_ref_logps=true", f"work_dir={tmp_path / 'pre'}")
    for step, loss in precomputed[0].losses.items():
        assert loss == pytest.approx(reference[step], abs=1e-5)


def test_truncation_drops_pairs_whose_response_is_cut_away(tmp_path, chat_tokenizer_dir):
    from transformers import AutoTokenizer

    from llms_trainer.train.stages.dpo import encode_dpo_pairs

    tokenizer = AutoTokenizer.from_pretrained(str(chat_tokenizer_dir))
    pairs, _ = read_pairs([str(write_pairs(tmp_path / "pairs.jsonl", 20, 3))])
    end = tokenizer.convert_tokens_to_ids("<|endofchat|>")
    full = encode_dpo_pairs(tokenizer, pairs, 256)
    assert len(full) == 20 and full.dropped == 0
    for row in range(40):  # the scored span is the response and its <|endofchat|>, nothing of the prompt
        ids = full.encoded.row(row).tolist()
        start, stop = full.spans[row]
        assert ids[stop - 1] == end and ids[start - 1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    prompt_lengths = sorted(full.spans[::2, 0].tolist())
    cut = encode_dpo_pairs(tokenizer, pairs, prompt_lengths[10])  # some prompts leave no response token
    assert 0 < cut.dropped < 20 and len(cut) == 20 - cut.dropped
    assert all(stop > start for start, stop in cut.spans.tolist())
