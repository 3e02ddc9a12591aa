"""Single-process training: loss falls, accumulation invariance, exact resume, checkpoints, NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import llms_trainer.ops.lm_loss as lm_loss_ops
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.errors import NonFiniteError as NonFiniteLossError
from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger

ROOT = Path(__file__).resolve().parents[2]


def train(config, model_config, *overrides, logger=None):
    return run(config, list(overrides), str(model_config), logger=logger or RecordingLogger())


def test_loss_falls_and_metrics_are_written(write_config, model_config_file, tmp_path):
    config = write_config(train={"num_training_steps": 30, "lr": 1e-2, "min_lr": 1e-3, "num_warmup_steps": 3},
                          log_interval=5)
    result = run(config, [], str(model_config_file))  # the real MetricsLogger
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    first = rows[0]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tokens_seen",
                "data/en/share", "data/zh/epochs"):
        assert key in first and math.isfinite(first[key])
    assert rows[-1]["train/tokens_seen"] == 30 * 2 * 32  # concat rows are full: steps × rows × seq_length
    assert (tmp_path / "run" / "performance.png").stat().st_size > 0
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_accumulation_2x1_equals_1x2(write_config, deterministic_model_config_file):
    # one row per document, padded to seq_length: micro-batches hold different numbers of tokens
    data = {"concat_multiple_sequence": False, "sequence_sample_mode": "none", "pad_to_max": True,
            "seq_length": 160}
    model_config_file = deterministic_model_config_file
    big = write_config("big", data=data, train={"train_batch_size": 2, "gradient_accumulation_steps": 1})
    small = write_config("small", data=data, train={"train_batch_size": 1, "gradient_accumulation_steps": 2})
    a = train(big, model_config_file, "train.resume=none").losses
    b = train(small, model_config_file, "train.resume=none").losses
    assert list(a) == list(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5)
    assert a[6] != pytest.approx(a[1], abs=1e-3)  # it trained


class Interrupt(Exception):
    pass


def test_resume_continues_exactly(write_config, model_config_file, tmp_path, monkeypatch):
    full = write_config("full", train={"num_training_steps": 6}, save_interval=3)
    part = write_config("part", train={"num_training_steps": 6}, save_interval=3)
    reference = train(full, model_config_file).losses

    original = ckpt.save_checkpoint

    def save_then_die(*args, **kwargs):
        path = original(*args, **kwargs)
        raise Interrupt(path)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        train(part, model_config_file)
    monkeypatch.setattr(ckpt, "save_checkpoint", original)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path / "part")] == [3]

    resumed = train(part, model_config_file)
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(reference[step], abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint-6" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_crash_during_save_keeps_previous_checkpoint(write_config, model_config_file, tmp_path, monkeypatch):
    config = write_config(train={"num_training_steps": 6}, save_interval=2)
    original = ckpt._save_trainer_state

    def crash_at_step_4(accelerator, model, optimizer, loader, state, out, failures):
        if state["step"] == 4:
            (out / "optimizer.pt").write_bytes(b"half-written")
            raise Interrupt("power cut")
        return original(accelerator, model, optimizer, loader, state, out, failures)

    monkeypatch.setattr(ckpt, "_save_trainer_state", crash_at_step_4)
    with pytest.raises(Interrupt):
        train(config, model_config_file)
    work = tmp_path / "run"
    assert [s for s, _ in ckpt.complete_checkpoints(work)] == [2]
    assert (work / "checkpoint-4.partial").is_dir() and not (work / "checkpoint-4").exists()
    assert ckpt.resolve_resume("auto", work) == work / "checkpoint-2"

    monkeypatch.setattr(ckpt, "_save_trainer_state", original)
    resumed = train(config, model_config_file)
    assert sorted(resumed.losses) == [3, 4, 5, 6]
    assert [s for s, _ in ckpt.complete_checkpoints(work)] == [2, 4, 6]
    assert not (work / "checkpoint-4.partial").exists()


def test_rotation_keeps_newest_and_leaves_other_files(write_config, model_config_file, tmp_path):
    config = write_config(train={"num_training_steps": 5, "save_total_limit": 2}, save_interval=1)
    work = tmp_path / "run"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "checkpoint-best").mkdir()
    (work / "checkpoint-0").mkdir()  # not complete: no marker, so not ours to rotate
    train(config, model_config_file)
    assert [s for s, _ in ckpt.complete_checkpoints(work)] == [4, 5]
    assert (work / "notes.txt").read_text() == "mine"
    assert (work / "checkpoint-best").is_dir() and (work / "checkpoint-0").is_dir()


def test_checkpoint_loads_with_plain_from_pretrained(write_config, model_config_file, tmp_path, corpus_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = write_config(train={"num_training_steps": 3})
    train(config, model_config_file)
    path = tmp_path / "run" / "checkpoint-3"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer("the model reads data", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    fresh = AutoModelForCausalLM.from_config(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, logits)
    state = json.loads((path / "trainer_state" / "state.json").read_text())
    assert state["step"] == 3 and state["num_processes"] == 1
    assert state["tokens_seen"] == 3 * 2 * 32


def test_nan_loss_stops_and_keeps_last_checkpoint(write_config, model_config_file, tmp_path, monkeypatch):
    config = write_config(train={"num_training_steps": 6}, save_interval=2)
    calls = {"n": 0}
    real = lm_loss_ops.lm_loss_terms

    def nan_at_third_step(model, batch, *args, **options):
        calls["n"] += 1
        loss, terms = real(model, batch, *args, **options)
        return (loss * float("nan") if calls["n"] == 3 else loss), terms

    monkeypatch.setattr(lm_loss_ops, "lm_loss_terms", nan_at_third_step)
    with pytest.raises(NonFiniteLossError, match="step 3.*checkpoint-2"):
        train(config, model_config_file)
    work = tmp_path / "run"
    assert [s for s, _ in ckpt.complete_checkpoints(work)] == [2]
    assert not list(work.glob("checkpoint-3*"))


def test_a_fresh_run_sets_the_previous_runs_eval_outputs_aside(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2, "train_and_eval": True}, eval_interval=2,
                          eval={"eval_methods": ["generation_eval"], "max_new_tokens": 2,
                                "generation_dataset": str(ROOT / "eval_data/pretrain/generation.jsonl")})
    run(config, [], str(model_config_file), logger=RecordingLogger())
    outputs = tmp_path / "run" / "generation_eval"
    (outputs / "step_99.json").write_text("[]")  # what a longer earlier run left behind
    run(config, ["train.resume=none", "train.overwrite_work_dir=true"], str(model_config_file),
        logger=RecordingLogger())
    assert sorted(p.name for p in outputs.iterdir()) == ["step_2.json"]
    assert (tmp_path / "run" / "generation_eval.prev" / "step_99.json").is_file()


def test_steps_without_a_loss_item_are_skipped_and_many_in_a_row_stop_the_run(write_config, model_config_file,
                                                                              monkeypatch):
    from llms_trainer.train import engine

    real, calls = lm_loss_ops.target_tokens, []

    def empty_at_first(batch: dict) -> int:  # e.g. GRPO steps whose completions were all truncated and masked
        calls.append(1)
        return 0 if len(calls) <= 3 else real(batch)

    monkeypatch.setattr(lm_loss_ops, "target_tokens", empty_at_first)
    result = run(write_config("skips", train={"num_training_steps": 4}), [], str(model_config_file),
                 logger=RecordingLogger())
    assert (result.step, result.empty_steps, sorted(result.losses)) == (4, 3, [1, 2, 3, 4])
    assert result.stop_reason == "num_training_steps reached"

    monkeypatch.setattr(lm_loss_ops, "target_tokens", lambda batch: 0)
    result = run(write_config("never", train={"num_training_steps": 4}), [], str(model_config_file),
                 logger=RecordingLogger())
    assert result.step == 0 and result.empty_steps == engine.MAX_EMPTY_STEPS_IN_A_ROW
    assert result.stop_reason.startswith(f"{engine.MAX_EMPTY_STEPS_IN_A_ROW} steps in a row without any loss item")
