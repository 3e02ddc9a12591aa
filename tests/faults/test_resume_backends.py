"""Exact resume under every backend we ship a config for: 2-process DDP, DeepSpeed ZeRO-2 and ZeRO-3.

A 2-process run equals one process (same global batch), then a run resumed from its checkpoint-2 matches it
step for step: the loss and the optimizer's own learning rate (the warmup is still running at the resume
point, which is where DeepSpeed used to restart its schedule). Under DDP and ZeRO-2 a run killed with
SIGKILL at a random step and launched again (`train.resume: auto`) also matches it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.run import run
from tests.faults.support import logged
from tests.faults.test_launch_faults import launch_command, rank_processes
from tests.train.conftest import RecordingLogger
from tests.train.test_distributed import ROOT, check, free_port, hf_logits, launch_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]

# One source, one document per row, rows padded to seq_length (token counts differ per rank), no shuffle
# inside a data unit: process r of 2 reads documents r, r+2, ... so a 2-process step with micro-batch 1 and
# accumulation 2 holds the same 4 documents as a 1-process step with micro-batch 2.
DATA = {"concat_multiple_sequence": False, "sequence_sample_mode": "truncation", "pad_to_max": True,
        "seq_length": 48, "shuffle_buffer_records": 1}
STEPS = {"num_training_steps": 16, "gradient_accumulation_steps": 2, "num_warmup_steps": 4}
LAST = STEPS["num_training_steps"]


def launch(acc_config: str, config: Path, model_config: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch_command(acc_config, config, model_config, *overrides), cwd=ROOT,
                          env=launch_env(MAIN_PROCESS_PORT=str(free_port())), capture_output=True, text=True,
                          timeout=420)
    check(proc)
    return proc


def write_run_config(path: Path, work_dir: Path, corpus_dir: Path, tokenizer_dir: Path, batch_size: int) -> Path:
    """The run every test here trains: micro-batch `batch_size` × accumulation 2, a checkpoint every 2 steps."""
    cfg = {"data": {"mode": "pretrain", "data": {"en": str(corpus_dir / "en")}, **DATA,
                    "tokenizer_path": str(tokenizer_dir)},
           "train": {**STEPS, "train_batch_size": batch_size, "lr": 5e-3, "min_lr": 5e-4, "weight_decay": 0.1,
                     "ckpt": None, "seed": 7, "mixed_precision": "no"},
           "log_interval": 1, "eval_interval": 100, "save_interval": 2, "work_dir": str(work_dir)}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir, tiny_tokenizer_dir, deterministic_model_config_file):
    """One process: micro-batch 2 × accumulation 2; returns (losses, lrs, work_dir)."""
    root = tmp_path_factory.mktemp("reference")
    config = write_run_config(root / "single.yaml", root / "single", corpus_dir, tiny_tokenizer_dir, 2)
    logger = RecordingLogger()
    losses = run(config, [], str(deterministic_model_config_file), logger=logger).losses
    lrs = {s: m["train/lr"] for s, m in logger.rows if "train/lr" in m}
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return losses, lrs, root / "single"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_dir, tiny_tokenizer_dir, deterministic_model_config_file):
    """uninterrupted(acc_config) → work_dir of one uninterrupted 2-process launch per backend (launched once)."""
    runs: dict[str, Path] = {}

    def get(acc_config: str) -> Path:
        if acc_config not in runs:
            root = tmp_path_factory.mktemp("uninterrupted")
            config = write_run_config(root / "run.yaml", root / "run", corpus_dir, tiny_tokenizer_dir, 1)
            launch(acc_config, config, deterministic_model_config_file)
            runs[acc_config] = root / "run"
        return runs[acc_config]

    return get


@pytest.mark.parametrize("acc_config", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml", "ds_stage3_cpu.yaml"])
def test_two_processes_equal_one_and_resume_exactly(acc_config, reference, uninterrupted, corpus_dir,
                                                    tiny_tokenizer_dir, deterministic_model_config_file, tmp_path):
    ref_losses, ref_lrs, ref_dir = reference
    work = uninterrupted(acc_config)
    losses, lrs = logged(work, "train/loss"), logged(work, "train/lr")
    assert sorted(losses) == list(range(1, LAST + 1))
    for step in losses:
        assert losses[step] == pytest.approx(ref_losses[step], abs=1e-5)
        assert lrs[step] == pytest.approx(ref_lrs[step], rel=1e-9)
    state = json.loads((work / f"checkpoint-{LAST}" / "trainer_state" / "state.json").read_text())
    assert state["num_processes"] == 2
    # the HF checkpoint (gathered from ZeRO shards) reloads to the one-process model
    assert torch.allclose(hf_logits(work / f"checkpoint-{LAST}"), hf_logits(ref_dir / f"checkpoint-{LAST}"),
                          atol=1e-4)

    resumed = tmp_path / "resumed"
    config = write_run_config(tmp_path / "resumed.yaml", resumed, corpus_dir, tiny_tokenizer_dir, 1)
    launch(acc_config, config, deterministic_model_config_file, f"train.resume={work / 'checkpoint-2'}")
    again, again_lrs = logged(resumed, "train/loss"), logged(resumed, "train/lr")
    assert sorted(again) == list(range(3, LAST + 1))
    for step in again:
        assert again[step] == pytest.approx(losses[step], abs=1e-6)
        assert again_lrs[step] == pytest.approx(lrs[step], rel=1e-9)
    assert again_lrs[3] < again_lrs[5]  # still warming up after the resume point


def last_logged_step(metrics: Path) -> int:
    """The highest step in a metrics.jsonl being written (0 before the first row)."""
    steps = [0]
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):  # a line still being written
            pass
    return max(steps)


def kill_at_step(command: list[str], config: Path, work: Path, step: int, log: Path) -> int:
    """Launch `command`, SIGKILL its whole process group once metrics.jsonl shows `step`; returns the last
    step logged. Fails unless every rank it started has ended within a minute."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=launch_env(MAIN_PROCESS_PORT=str(free_port())),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while last_logged_step(work / "metrics.jsonl") < step:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 60
        while rank_processes(str(config)) and time.time() < deadline:
            time.sleep(0.2)
        assert not rank_processes(str(config)), "ranks still running after the launcher's group was killed"
    finally:
        for pid in rank_processes(str(config)):
            os.kill(pid, signal.SIGKILL)
    return last_logged_step(work / "metrics.jsonl")


@pytest.mark.parametrize("acc_config", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml"])
def test_kill_9_at_a_random_step_then_resume_equals_uninterrupted(acc_config, uninterrupted, corpus_dir,
                                                                  tiny_tokenizer_dir, deterministic_model_config_file,
                                                                  tmp_path):
    seed = f"kill:{acc_config}"
    kill_step = random.Random(seed).randint(3, LAST - 6)
    why = f"(random.Random({seed!r}) chose step {kill_step})"
    work = tmp_path / "killed"
    config = write_run_config(tmp_path / "killed.yaml", work, corpus_dir, tiny_tokenizer_dir, 1)
    rotate = "train.save_total_limit=2"  # a kill may also land inside a save or a rotation
    seen = kill_at_step(launch_command(acc_config, config, deterministic_model_config_file, rotate), config, work,
                        kill_step, tmp_path / "killed.log")
    assert kill_step <= seen < LAST, f"the kill did not land inside the run {why}"
    newest = ckpt.complete_checkpoints(work)[-1][0]
    # the save of every even step below the last logged one had finished: rotation never removed the newest
    assert newest >= 2 * ((seen - 1) // 2), f"checkpoint-{newest} after step {seen} was logged {why}"

    again = launch(acc_config, config, deterministic_model_config_file, rotate)  # train.resume: auto
    assert f"resumed from {work / f'checkpoint-{newest}'} at step {newest}" in again.stdout, why
    full = uninterrupted(acc_config)
    losses, lrs = logged(work, "train/loss"), logged(work, "train/lr")
    expected, expected_lrs = logged(full, "train/loss"), logged(full, "train/lr")
    assert sorted(losses) == list(range(1, LAST + 1)), why
    for step in range(newest + 1, LAST + 1):
        assert losses[step] == pytest.approx(expected[step], abs=1e-6), f"step {step} {why}"
        assert lrs[step] == pytest.approx(expected_lrs[step], rel=1e-9), f"step {step} {why}"
    assert torch.allclose(hf_logits(work / f"checkpoint-{LAST}"), hf_logits(full / f"checkpoint-{LAST}"),
                          atol=1e-5), why
    assert not ckpt.leftover_dirs(work), why  # the killed save's or rotation's leftovers were cleared
