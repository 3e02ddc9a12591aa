"""Exact resume under every backend we ship a config for: 2-process DDP, DeepSpeed ZeRO-2 and ZeRO-3.

A 2-process run equals one process (same global batch), then a run resumed from its checkpoint-2 matches it
step for step: the loss and the optimizer's own learning rate (the warmup is still running at the resume
point, which is where DeepSpeed used to restart its schedule).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger
from tests.train.test_distributed import ACC, ROOT, check, free_port, hf_logits, launch_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]

# One source, one document per row, rows padded to seq_length (token counts differ per rank), no shuffle
# inside a data unit: process r of 2 reads documents r, r+2, ... so a 2-process step with micro-batch 1 and
# accumulation 2 holds the same 4 documents as a 1-process step with micro-batch 2.
DATA = {"concat_multiple_sequence": False, "sequence_sample_mode": "truncation", "pad_to_max": True,
        "seq_length": 48, "shuffle_buffer_records": 1}
STEPS = {"num_training_steps": 6, "gradient_accumulation_steps": 2, "num_warmup_steps": 4}


def logged(work_dir: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def launch(acc_config: str, config: Path, model_config: Path, *overrides: str) -> None:
    check(subprocess.run(
        ["sh", str(ROOT / "train_llms.sh"), str(ACC / acc_config), str(config), str(model_config), *overrides],
        cwd=ROOT, env=launch_env(MAIN_PROCESS_PORT=str(free_port())), capture_output=True, text=True, timeout=420))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir, tiny_tokenizer_dir, deterministic_model_config_file):
    """One process: micro-batch 2 × accumulation 2 for 6 steps; returns (losses, lrs, work_dir)."""
    import yaml

    root = tmp_path_factory.mktemp("reference")
    cfg = {"data": {"mode": "pretrain", "data": {"en": str(corpus_dir / "en")}, **DATA,
                    "tokenizer_path": str(tiny_tokenizer_dir)},
           "train": {**STEPS, "train_batch_size": 2, "lr": 5e-3, "min_lr": 5e-4, "weight_decay": 0.1,
                     "ckpt": None, "seed": 7, "mixed_precision": "no"},
           "log_interval": 1, "eval_interval": 100, "save_interval": 2, "work_dir": str(root / "single")}
    (root / "single.yaml").write_text(yaml.safe_dump(cfg))
    logger = RecordingLogger()
    losses = run(root / "single.yaml", [], str(deterministic_model_config_file), logger=logger).losses
    lrs = {s: m["train/lr"] for s, m in logger.rows if "train/lr" in m}
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return losses, lrs, root / "single"


@pytest.mark.parametrize("acc_config", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml", "ds_stage3_cpu.yaml"])
def test_two_processes_equal_one_and_resume_exactly(acc_config, reference, write_config,
                                                    deterministic_model_config_file, corpus_dir, tmp_path):
    ref_losses, ref_lrs, ref_dir = reference
    config = write_config("launched", sources={"en": str(corpus_dir / "en")}, data=DATA,
                          train={**STEPS, "train_batch_size": 1}, save_interval=2)
    launch(acc_config, config, deterministic_model_config_file)
    work = tmp_path / "launched"
    losses, lrs = logged(work, "train/loss"), logged(work, "train/lr")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    for step in losses:
        assert losses[step] == pytest.approx(ref_losses[step], abs=1e-5)
        assert lrs[step] == pytest.approx(ref_lrs[step], rel=1e-9)
    state = json.loads((work / "checkpoint-6" / "trainer_state" / "state.json").read_text())
    assert state["num_processes"] == 2
    # the HF checkpoint (gathered from ZeRO shards) reloads to the one-process model
    assert torch.allclose(hf_logits(work / "checkpoint-6"), hf_logits(ref_dir / "checkpoint-6"), atol=1e-4)

    resumed = Path(f"{work}_resumed")
    launch(acc_config, config, deterministic_model_config_file, f"train.resume={work / 'checkpoint-2'}",
           f"work_dir={resumed}")
    again, again_lrs = logged(resumed, "train/loss"), logged(resumed, "train/lr")
    assert sorted(again) == [3, 4, 5, 6]
    for step in again:
        assert again[step] == pytest.approx(losses[step], abs=1e-6)
        assert again_lrs[step] == pytest.approx(lrs[step], rel=1e-9)
    assert again_lrs[3] < again_lrs[5]  # still warming up after the resume point
