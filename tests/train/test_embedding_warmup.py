"""train.embedding_warmup_steps: only the token embeddings train during the warm-up (everything else
bit-identical), then everything; a resume from inside the warm-up crosses the switch as an uninterrupted run.
(The same under 2-process DDP and DeepSpeed ZeRO-2/3: tests/faults/test_embedding_warmup_backends.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llms_trainer.config import ConfigError
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from tests.train.conftest import RecordingLogger, tiny_llama

WARMUP, STEPS, WARMUP_LR = 2, 4, 2e-2
TRAIN = {"num_training_steps": STEPS, "num_warmup_steps": 0, "embedding_warmup_steps": WARMUP,
         "embedding_warmup_lr": WARMUP_LR, "lr": 5e-3, "weight_decay": 0.1}


def initial_model(folder: Path, vocab_size: int, tie: bool) -> Path:
    """A seeded tiny Llama saved as an HF dir (the run's train.ckpt, so its step-0 weights are on disk)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    LlamaForCausalLM(LlamaConfig(**tiny_llama(vocab_size, tie_word_embeddings=tie))).save_pretrained(str(folder))
    return folder


def is_embedding(name: str) -> bool:
    return "embed_tokens" in name or "lm_head" in name


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_only_embeddings_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for name in before:
        if is_embedding(name):
            assert not torch.equal(before[name], after[name]), f"{name} did not train during the warm-up"
        else:
            assert torch.equal(before[name], after[name]), f"{name} changed during the embedding warm-up"


def lrs(logger: RecordingLogger) -> dict[int, float]:
    return {step: m["train/lr"] for step, m in logger.rows if "train/lr" in m}


@pytest.mark.parametrize("tie", [False, True])
def test_warmup_trains_only_the_embeddings_then_everything(tie, write_config, tiny_tokenizer, tmp_path):
    start = initial_model(tmp_path / "start", len(tiny_tokenizer), tie)
    config = write_config(train={**TRAIN, "ckpt": str(start)}, save_interval=WARMUP)
    logger = RecordingLogger()
    run(config, [], None, logger=logger)
    before = weights(start)
    assert_only_embeddings_changed(before, weights(tmp_path / "run" / f"checkpoint-{WARMUP}"))
    after = weights(tmp_path / "run" / f"checkpoint-{STEPS}")
    assert all(not torch.equal(before[n], after[n]) for n in before if not n.endswith("norm.weight"))
    assert lrs(logger)[1] == lrs(logger)[WARMUP] == WARMUP_LR
    assert lrs(logger)[WARMUP + 1] == pytest.approx(5e-3)  # the schedule starts after the warm-up


def assert_only_new_rows_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], first_row: int):
    for name in before:
        if is_embedding(name):
            assert torch.equal(before[name][:first_row], after[name][:first_row]), f"old rows of {name} changed"
        else:
            assert torch.equal(before[name], after[name]), f"{name} changed during the embedding warm-up"
    assert not torch.equal(before["lm_head.weight"][first_row:], after["lm_head.weight"][first_row:])


def test_warmup_of_the_new_rows_only_keeps_old_rows_bit_identical(write_config, tiny_tokenizer, tmp_path):
    start = initial_model(tmp_path / "start", len(tiny_tokenizer), tie=False)
    first_row = len(tiny_tokenizer) - 100
    config = write_config(train={**TRAIN, "ckpt": str(start), "weight_decay": 0.0,
                                 "embedding_warmup_rows_from": first_row}, save_interval=WARMUP)
    run(config, [], None, logger=RecordingLogger())
    before = weights(start)
    assert_only_new_rows_changed(before, weights(tmp_path / "run" / f"checkpoint-{WARMUP}"), first_row)
    after = weights(tmp_path / "run" / f"checkpoint-{STEPS}")  # after the switch the old rows train too
    assert not torch.equal(before["lm_head.weight"][:first_row], after["lm_head.weight"][:first_row])


def test_resume_inside_the_warmup_equals_an_uninterrupted_run(write_config, tiny_tokenizer, tmp_path):
    start = initial_model(tmp_path / "start", len(tiny_tokenizer), tie=False)
    warmup = {**TRAIN, "ckpt": str(start), "embedding_warmup_steps": 3, "num_training_steps": 5,
              "num_warmup_steps": 1}
    full, full_logger = write_config("full", train=warmup, save_interval=2), RecordingLogger()
    reference = run(full, [], None, logger=full_logger).losses
    resumed_logger = RecordingLogger()
    resumed = run(write_config("resumed", train=warmup, save_interval=2),
                  [f"train.resume={tmp_path / 'full' / 'checkpoint-2'}"], None, logger=resumed_logger).losses
    assert sorted(resumed) == [3, 4, 5]
    for step in resumed:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)
        assert lrs(resumed_logger)[step] == lrs(full_logger)[step]
    a, b = weights(tmp_path / "full" / "checkpoint-5"), weights(tmp_path / "resumed" / "checkpoint-5")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    state = json.loads((tmp_path / "resumed" / "checkpoint-5" / "trainer_state" / "state.json").read_text())
    assert state["step"] == 5


@pytest.mark.parametrize("train, message", [
    ({"embedding_warmup_steps": 6}, "key train.embedding_warmup_steps: 6 leaves no step of num_training_steps 6"),
    ({"embedding_warmup_steps": 4, "num_warmup_steps": 3},
     "key train.num_warmup_steps: 3 exceeds the 2 steps after train.embedding_warmup_steps"),
    ({"embedding_warmup_steps": 2, "use_lora": True},
     "key train.embedding_warmup_steps: cannot be combined with train.use_lora"),
    ({"embedding_warmup_lr": 1e-3}, "key train.embedding_warmup_lr: has no effect without"),
    ({"embedding_warmup_steps": 2, "embedding_warmup_rows_from": 600, "weight_decay": 0.1},
     "key train.embedding_warmup_rows_from: needs train.weight_decay 0"),
])
def test_impossible_warmups_are_config_errors(train, message, write_config):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(train={"num_training_steps": 6, **train}))
