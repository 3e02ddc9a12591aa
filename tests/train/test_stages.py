"""The stage registry and contract: a rollout stage's statistics, deferred saves and exact resume; registry
and section validation; frozen models; LoRA merged checkpoints of causal LMs and sequence classifiers."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from llms_trainer.config import ConfigError
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train import engine
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from tests.train import toy_stage
from tests.train.conftest import RecordingLogger
from train_llms import main


class Interrupt(Exception):
    pass


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(toy_stage.REGISTRY, "toy", toy_stage.__name__)


def toy_config(write_config, name: str, **train):
    return write_config(name, stage="toy", train={"num_training_steps": 9, "gradient_accumulation_steps": 2,
                                                 "train_batch_size": 1, **train}, save_interval=2)


def test_rollout_stage_logs_its_statistic_defers_saves_and_resumes_exactly(toy, write_config, model_config_file,
                                                                          tmp_path, monkeypatch):
    logger = RecordingLogger()
    captured = []
    real_optimizer = engine.make_optimizer

    def capture(model, *args):
        captured.append((model, real_optimizer(model, *args)))
        return captured[-1][1]

    monkeypatch.setattr(engine, "make_optimizer", capture)
    reference = run(toy_config(write_config, "full"), [], str(model_config_file), logger=logger)
    monkeypatch.setattr(engine, "make_optimizer", real_optimizer)
    rows = [m for _, m in logger.rows if "train/toy" in m]
    assert len(rows) == 9
    for m in rows:  # 1 process, 2 micro-batches: (1·1 + 1·4) / (1 + 2), not the mean of means 1.5
        assert m["train/toy"] == pytest.approx(5 / 3)
        assert m["train/ref_drift"] == 0 and m["train/ref_grads"] == 0
    # saves were due at 2, 4, 6, 8 but a rollout stage saves between rollouts: after steps 3, 6 and the end
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path / "full")] == [3, 6, 9]
    # the optimizer holds exactly the policy's parameters: the frozen reference has no optimizer state
    policy, optimizer = captured[0]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in policy.parameters()}
    # each rollout's 3 passes see the same batches: the loss falls within a rollout
    assert reference.losses[3] < reference.losses[1]

    original = ckpt.save_checkpoint

    def die_after_step_3(*args, **kwargs):
        path = original(*args, **kwargs)
        if args[5]["step"] == 3:
            raise Interrupt(path)
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", die_after_step_3)
    part = toy_config(write_config, "part")
    with pytest.raises(Interrupt):
        run(part, [], str(model_config_file), logger=RecordingLogger())
    monkeypatch.setattr(ckpt, "save_checkpoint", original)
    resumed = run(part, [], str(model_config_file), logger=RecordingLogger())
    assert sorted(resumed.losses) == [4, 5, 6, 7, 8, 9]
    for step in resumed.losses:
        assert resumed.losses[step] == pytest.approx(reference.losses[step], abs=1e-6)


@pytest.mark.dist
@pytest.mark.slow
def test_rollout_statistic_and_frozen_reference_under_zero2_with_two_processes(write_config, model_config_file,
                                                                                 tmp_path):
    from tests.train.test_distributed import ACC, ROOT, check, free_port, launch_env

    config = toy_config(write_config, "launched", num_training_steps=3)
    proc = subprocess.run(
        ["accelerate", "launch", "--config_file", str(ACC / "ds_stage2_cpu.yaml"), "--main_process_port",
         str(free_port()), str(ROOT / "tests" / "train" / "toy_stage.py"), "--train_config", str(config),
         "--model_config", str(model_config_file)],
        cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=420)
    check(proc)
    rows = [json.loads(line) for line in (tmp_path / "launched" / "metrics.jsonl").read_text().splitlines()]
    toy = [r["train/toy"] for r in rows if "train/toy" in r]
    # 2 processes × 2 micro-batches: Σ(r+1)(j+1)² / Σ(j+1) = (1+2)·5 / (2·3) = 2.5 (a mean of means: 2.25)
    assert toy == [pytest.approx(2.5)] * 3
    assert all(r["train/ref_drift"] == 0 and r["train/ref_grads"] == 0 for r in rows if "train/toy" in r)


def test_a_stage_declares_its_own_section_and_check_validates_it(toy, write_config, model_config_file, capsys):
    """Adding a stage = its file + one registry line: the toy stage's `toy:` section loads and its check runs,
    with no edit to config code; the section stays foreign to other stages."""
    args = ["--train_config", str(toy_config(write_config, "toy", num_training_steps=3)), "--model_config",
            str(model_config_file), "--check"]
    assert main([*args, "toy.passes=2"]) == 0
    assert "ok (stage toy" in capsys.readouterr().out
    assert load_config(args[1], ["toy.passes=2"]).toy.passes == 2
    assert main([*args, "toy.passes=5"]) == 2
    assert "key toy.passes: 5 exceeds train.num_training_steps 3" in capsys.readouterr().err
    assert main([*args, "toy.pases=2"]) == 2
    assert "key toy.pases: unknown key" in capsys.readouterr().err
    assert main([*args, "stage=pretrain", "toy.passes=2"]) == 2
    assert "key toy: options of the toy stage, but this run's stage is pretrain" in capsys.readouterr().err


def test_unknown_stage_and_foreign_sections_fail_at_check(write_config, model_config_file, capsys):
    args = ["--train_config", str(write_config()), "--model_config", str(model_config_file), "--check"]
    assert main([*args, "stage=ppo"]) == 2
    assert "key stage: 'ppo' is not a stage; stages: pretrain, sft, reward, dpo, grpo" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"key dpo: options of the dpo stage, but this run's stage is pretrain"):
        load_config(write_config(dpo={}))
    with pytest.raises(ConfigError, match=r"key data.reward_model_datasets: read by the reward stage only"):
        load_config(write_config(data={"reward_model_datasets": ["x.jsonl"]}))
    with pytest.raises(ConfigError, match=r"key sft.on_bad_record: unknown key"):
        load_config(write_config(stage="sft", sft={"on_bad_record": "skip"}))  # it is a data: key


def test_a_registered_stage_missing_from_the_install_fails_at_check(write_config, model_config_file, capsys,
                                                                    monkeypatch):
    from llms_trainer.train import stages

    monkeypatch.setitem(stages.REGISTRY, "grpo", "llms_trainer.train.stages.not_there")
    assert main(["--train_config", str(write_config()), "--model_config", str(model_config_file), "--check",
                 "stage=grpo"]) == 2
    err = capsys.readouterr().err
    assert "key stage: the grpo stage cannot be imported" in err and "stages available here: pretrain" in err


@pytest.mark.parametrize("kind", ["causal_lm", "sequence_classifier"])
def test_lora_merged_checkpoint_loads_with_plain_from_pretrained(kind, write_config, model_config_file, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from llms_trainer.model.load import (
        build_causal_lm,
        build_sequence_classifier,
        load_tokenizer,
        prepare_for_training,
    )

    cfg = load_config(write_config(train={"use_lora": True, "target_modules": ["q_proj", "v_proj"]}))
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    build, auto = ((build_causal_lm, AutoModelForCausalLM) if kind == "causal_lm"
                   else (build_sequence_classifier, AutoModelForSequenceClassification))
    model = prepare_for_training(build(cfg, tokenizer, str(model_config_file)), cfg.train)
    with torch.no_grad():  # as if trained: adapters and (classifier) head away from their init
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    accelerator = Accelerator(cpu=True)
    out = tmp_path / "merged"
    (out / "x").mkdir(parents=True)
    failures = []
    ckpt._save_model(accelerator, model, tokenizer, out, failures)
    assert not failures
    ids = tokenizer(["the model reads data"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**ids).logits
        loaded = auto.from_pretrained(out).eval()
        assert torch.allclose(loaded(**ids).logits, expected, atol=1e-5)
    saved = set(loaded.state_dict())
    assert not any("lora_" in k or "modules_to_save" in k or "original_module" in k for k in saved)


def test_frozen_model_gets_no_gradient(write_config, model_config_file):
    from accelerate import Accelerator

    from llms_trainer.model.frozen import prepare_frozen
    from llms_trainer.model.load import build_causal_lm, load_tokenizer

    cfg = load_config(write_config())
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    frozen = prepare_frozen(build_causal_lm(cfg, tokenizer, str(model_config_file)), Accelerator(cpu=True))
    ids = tokenizer(["the model reads data"], return_tensors="pt")["input_ids"]
    out = frozen(input_ids=ids).logits
    assert not out.requires_grad and not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())


def test_compatibility_keys_print_a_note_when_set(write_config, model_config_file, capsys):
    config = write_config(data={"num_sequences": 10, "split_by_shard": True}, train={"num_training_steps": 1})
    run(config, [], str(model_config_file), logger=RecordingLogger())
    out = capsys.readouterr().out
    for key in ("data.num_sequences", "data.split_by_shard"):
        assert f"note: {key} is accepted for compatibility and has no effect" in out
