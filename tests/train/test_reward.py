"""Reward model stage: scores under any padding, learning a preference (and not learning noise), exact
resume, checkpoints that from_pretrained loads with the training scores (full and LoRA), head init."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llms_trainer.data.packing import pad_rows
from llms_trainer.data.pairs import encode_sequences, read_pairs
from llms_trainer.ops.scores import score_pairs
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config, reward
from tests.train.conftest import RecordingLogger, tiny_llama
from tests.train.reward_support import reward_config, write_pairs


def load_script(relative: str):
    """A script of the repository as a module (scripts are run by path, not imported as a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(config, model_config, *overrides):
    logger = RecordingLogger()
    result = run(config, list(overrides), str(model_config), logger=logger)
    return result, logger


def last_metrics(logger: RecordingLogger) -> dict[str, float]:
    return {k: v for _, metrics in logger.rows for k, v in metrics.items()}


@pytest.fixture
def classifier(tiny_tokenizer):
    def build(pad_token_id: int):
        from transformers import LlamaConfig, LlamaForSequenceClassification

        torch.manual_seed(0)
        config = LlamaConfig(**{k: v for k, v in tiny_llama(len(tiny_tokenizer)).items() if k != "model_type"},
                             num_labels=1, pad_token_id=pad_token_id)
        return LlamaForSequenceClassification(config).eval()
    return build


@pytest.mark.parametrize("case", ["left padding", "right padding", "pad == eos"])
def test_a_score_is_the_same_alone_and_batched_with_longer_rows(case, classifier, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    pad = eos if case == "pad == eos" else tiny_tokenizer.unk_token_id
    model = classifier(pad)
    rows = encode_sequences(tiny_tokenizer, ["the model", "the optimizer updates weights step by step on a small",
                                             "many sources"],
                            [" reads", " machine with two cores while the model learns", " and data"], 64)
    assert len(rows[0]) < len(rows[1]) and all(row[-1] == eos for row in rows)
    with torch.no_grad():
        alone = reward.sequence_scores(model, **pad_rows(rows[:1], pad))
        batched = reward.sequence_scores(model, **pad_rows(rows, pad, left=case == "left padding"))
        # the head's value at the final EOS of the unpadded row, computed by hand
        ids = torch.tensor([rows[0]])
        by_hand = model.score(model.model(input_ids=ids).last_hidden_state)[0, -1, 0]
    assert batched[0].item() == pytest.approx(alone[0].item(), abs=1e-5)
    assert alone[0].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert batched[0].item() != pytest.approx(batched[1].item(), abs=1e-3)


def test_learns_a_preference_and_the_checkpoint_scores_as_training(tmp_path, tiny_tokenizer_dir,
                                                                   deterministic_model_config_file, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train_file, held = write_pairs(tmp_path / "train.jsonl", 200, 1), write_pairs(tmp_path / "held.jsonl", 100, 2)
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", {"pairs": str(train_file)}, {"held": str(held)},
                           train={"num_training_epochs": 1}, eval={"save_delta_scores": True})
    result, logger = train(config, deterministic_model_config_file)
    assert result.step == 200 // 8
    metrics = last_metrics(logger)
    assert metrics["eval/reward/held/accuracy"] >= 0.95 and metrics["eval/reward/held/delta_mean"] > 1.0
    first = logger.rows[0][1]
    assert first["train/loss"] == pytest.approx(math.log(2), abs=0.1)  # an untrained head: s_c ≈ s_r
    assert metrics["train/accuracy"] == 1.0 and metrics["train/margin"] > 1.0
    assert metrics["train/reward_std"] > 0 and "train/reward" in metrics

    work = tmp_path / "rm"
    path = work / "checkpoint-25"
    saved = json.loads((work / "delta_scores" / "step_25.json").read_text())
    assert saved["step"] == 25 and len(saved["deltas"]["held"]) == 100
    assert (work / "reward_eval" / "delta_hist_step25.png").stat().st_size > 0
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    pairs, _ = read_pairs([str(held)])
    prompts = [p.prompt for p in pairs]
    chosen = score_pairs(model, tokenizer, prompts, [p.selected for p in pairs], batch_size=7)
    rejected = score_pairs(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size=16)
    deltas = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert deltas == pytest.approx(saved["deltas"]["held"], abs=1e-5)
    config_json = json.loads((path / "config.json").read_text())
    assert config_json["reward_mean"] == pytest.approx(metrics["eval/reward/reward_mean"])
    assert config_json["reward_std"] == pytest.approx(metrics["eval/reward/reward_std"])
    assert config_json["reward_seq_length"] == 64  # score_pairs truncates as training did

    assert load_script("utils/score_pairs.py").main([str(path), str(held)]) == 0
    right = sum(d > 0 for d in deltas)
    assert f"accuracy {right / 100:.4f} ({right}/100 pairs)" in capsys.readouterr().out


def test_shuffled_preferences_stay_near_chance(tmp_path, tiny_tokenizer_dir, deterministic_model_config_file):
    train_file = write_pairs(tmp_path / "train.jsonl", 200, 1, shuffled=True)
    held = write_pairs(tmp_path / "held.jsonl", 100, 2, shuffled=True)
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(train_file)], [str(held)],
                           train={"num_training_epochs": 1})
    _, logger = train(config, deterministic_model_config_file)
    assert 0.35 <= last_metrics(logger)["eval/reward/held/accuracy"] <= 0.65


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(tmp_path, tiny_tokenizer_dir, model_config_file, monkeypatch):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 20, 3)  # 6 steps × 4 pairs cross an epoch boundary
    common = {"train": {"num_training_steps": 6, "num_training_epochs": None}, "data": {"batch_size": 4},
              "save_interval": 3}
    full = reward_config(tmp_path, tiny_tokenizer_dir, "full", [str(pairs)], **common)
    part = reward_config(tmp_path, tiny_tokenizer_dir, "part", [str(pairs)], **common)
    reference = train(full, model_config_file)[0].losses  # the model has dropout: RNG state matters too

    original = ckpt.save_checkpoint

    def save_then_die(*args, **kwargs):
        raise Interrupt(original(*args, **kwargs))

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        train(part, model_config_file)
    monkeypatch.setattr(ckpt, "save_checkpoint", original)
    resumed = train(part, model_config_file)[0]
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(reference[step], abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint-6" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_checkpoint_keeps_the_trained_head_and_scores_as_training(tmp_path, tiny_tokenizer_dir,
                                                                       deterministic_model_config_file):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    train_file, held = write_pairs(tmp_path / "train.jsonl", 48, 4), write_pairs(tmp_path / "held.jsonl", 12, 5)
    config = reward_config(tmp_path, tiny_tokenizer_dir, "lora", [str(train_file)], [str(held)],
                           train={"num_training_epochs": 1, "use_lora": True, "lora_rank": 4, "lr": 1e-2},
                           eval={"save_delta_scores": True}, data={"seq_length": 14})  # half the rows are cut
    result, _ = train(config, deterministic_model_config_file)
    path = tmp_path / "lora" / f"checkpoint-{result.step}"
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    model, info = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32,
                                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs, _ = read_pairs([str(held)])
    prompts = [p.prompt for p in pairs]
    deltas = [c - r for c, r in zip(score_pairs(model.eval(), tokenizer, prompts, [p.selected for p in pairs]),
                                    score_pairs(model, tokenizer, prompts, [p.rejected for p in pairs]), strict=True)]
    saved = json.loads((tmp_path / "lora" / "delta_scores" / f"step_{result.step}.json").read_text())
    assert deltas == pytest.approx(saved["deltas"]["held"], abs=1e-5)

    fresh = reward.build_model(load_config(config, ["stage=reward"]), tokenizer, str(deterministic_model_config_file))
    assert not torch.allclose(fresh.score.weight, model.score.weight)  # the head trained (and was saved)


def test_downscale_weight_scales_a_new_head_only(tmp_path, tiny_tokenizer_dir, tiny_tokenizer,
                                                 deterministic_model_config_file):
    pairs = write_pairs(tmp_path / "p.jsonl", 8, 0)
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs)])
    plain = reward.build_model(load_config(config), tiny_tokenizer, str(deterministic_model_config_file))
    scaled_cfg = load_config(config, ["train.downscale_weight=true"])
    scaled = reward.build_model(scaled_cfg, tiny_tokenizer, str(deterministic_model_config_file))
    assert torch.allclose(scaled.score.weight, plain.score.weight * 0.1)
    plain.save_pretrained(tmp_path / "rm_ckpt")
    loaded = reward.build_model(scaled_cfg, tiny_tokenizer, None, weights_dir=tmp_path / "rm_ckpt")
    assert torch.equal(loaded.score.weight, plain.score.weight)  # a trained head is never rescaled


def test_center_rewards_coefficient_adds_its_term(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, classifier):
    from llms_trainer.data.pairs import Pair, PairStream, encode_pairs

    pairs = encode_pairs(tiny_tokenizer, [Pair(f"q {i}", " the model", " reads", None, "") for i in range(4)], 32)
    batch = PairStream(pairs, 4, 0, 1, seed=0, max_epochs=1, fill=0).next_batch()
    model = classifier(tiny_tokenizer.unk_token_id)
    with torch.no_grad():
        scores = reward.sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        s_c, s_r = scores[:4], scores[4:]
        plain, stats = reward.RewardRun(None, 0.0).loss(model, batch)
        centred, _ = reward.RewardRun(None, 0.5).loss(model, batch)
    assert plain.item() == pytest.approx(-torch.nn.functional.logsigmoid(s_c - s_r).sum().item(), abs=1e-5)
    assert (centred - plain).item() == pytest.approx(0.5 * ((s_c + s_r) ** 2).sum().item(), abs=1e-5)
    assert stats["accuracy"][1] == 4 and stats["reward"][2] == 8
    assert stats["reward"][1].item() == pytest.approx((scores ** 2).sum().item(), rel=1e-6)


def test_engine_logs_std_from_sums_of_squares():
    from llms_trainer.train.engine import _step_stats

    values = [1.0, 2.0, 4.0, 7.0]
    stats = _step_stats({"loss": [3.0], "reward": [sum(values), sum(v * v for v in values), 4.0],
                         "accuracy": [3.0, 4.0]})
    mean = sum(values) / 4
    assert stats == pytest.approx({"reward": mean, "accuracy": 0.75,
                                   "reward_std": math.sqrt(sum((v - mean) ** 2 for v in values) / 4)})


def test_steps_from_epochs_are_derived_into_a_copy_of_the_config(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    from types import SimpleNamespace

    from llms_trainer.evaluation.reward_accuracy import score_pairs as documented
    from llms_trainer.train.run import with_derived_train

    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", {"pairs": str(write_pairs(tmp_path / "p.jsonl", 40, 1))},
                           data={"batch_size": 4}, train={"gradient_accumulation_steps": 2})
    cfg = load_config(config)
    given = cfg.model_dump()
    one_process = SimpleNamespace(process_index=0, num_processes=1, print=lambda *args: None)
    data = reward.build_train_data(cfg, tiny_tokenizer, one_process)
    assert cfg.model_dump() == given and cfg.train.num_training_steps is None  # the stage changed nothing
    resolved = with_derived_train(cfg, reward.STAGE, data)
    assert (resolved.train.num_training_steps, resolved.train.train_batch_size) == (2 * 40 // 4 // 2, 4)
    assert cfg.model_dump() == given
    assert reward.RewardRun(data.stream, 0.0, data.score_stats).saved_config() == {}  # no eval yet: nothing
    data.score_stats.mean, data.score_stats.std = 0.25, 1.5
    assert reward.start(cfg, SimpleNamespace(data=data)).saved_config() == {"reward_mean": 0.25, "reward_std": 1.5}
    assert documented is score_pairs  # the import path the README names
