"""Errors after launch end as one `error:` line with the documented exit code, and killing the launcher
ends every rank it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llms_trainer.train.run import run
from tests.faults.support import one_error_line
from tests.train.conftest import RecordingLogger
from tests.train.test_distributed import ACC, ROOT, free_port, launch_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def launch_command(acc: str, config: Path, model_config: Path, *overrides: str) -> list[str]:
    """`sh train_llms.sh ACC_CFG CFG MODEL_CFG overrides...` with ACC_CFG a file of configs/accelerate_configs."""
    return ["sh", str(ROOT / "train_llms.sh"), str(ACC / acc), str(config), str(model_config), *overrides]


def launched(config: Path, model_config: Path, *overrides: str, acc: str = "cpu_ddp.yaml",
             timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(acc, config, model_config, *overrides), cwd=ROOT,
                          env=launch_env(MAIN_PROCESS_PORT=str(free_port())), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, pattern: str) -> None:
    import re

    assert proc.returncode == code, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-4000:]
    last = one_error_line(proc.stderr)
    assert re.search(pattern, last), last


def test_process_count_mismatch_after_launch(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    run(config, [], str(model_config_file), logger=RecordingLogger())  # one process wrote checkpoint-2
    work = tmp_path / "run"
    before = sorted(str(p) for p in work.rglob("*")), (work / "config.yaml").read_bytes()
    proc = launched(config, model_config_file, "train.num_training_steps=4")
    assert_one_error_line(proc, 2, r"checkpoint-2: written by 1 processes, this run has 2")
    assert (sorted(str(p) for p in work.rglob("*")), (work / "config.yaml").read_bytes()) == before


def test_corrupt_shard_met_after_launch(write_config, model_config_file, tmp_path, corpus_dir):
    import shutil

    bad = tmp_path / "bad_corpus" / "zh"
    shutil.copytree(corpus_dir / "zh", bad)
    shard = sorted(bad.glob("*.jsonl.zst"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    shard.write_bytes(bytes(data))
    config = write_config("run", sources={"zh": str(bad)}, train={"num_training_steps": 2})
    proc = launched(config, model_config_file)
    assert_one_error_line(proc, 2, rf"{shard.name}")
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_full_disk_during_save_is_one_error_line(write_config, model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    # 200 KiB per file: config, metrics and logs fit, the model's weights (about 650 KB) do not
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -f 200; exec "{sys.executable}" train_llms.py --train_config {config} '
                       f'--model_config {model_config_file}'],
        cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc, 2, r"could not write .*checkpoint-2 \(.*File too large.*\); earlier checkpoints")
    work = tmp_path / "run"
    assert not list(work.glob("checkpoint-*"))


def rank_processes(marker: str) -> list[int]:
    """pids of live processes whose command line mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker in cmdline and "State:\tZ" not in status:
            pids.append(int(entry.name))
    return pids


def test_killing_the_launcher_ends_every_rank(write_config, model_config_file, tmp_path):
    config = write_config("killed", train={"num_training_steps": 100000}, save_interval=100000)
    proc = subprocess.Popen(
        launch_command("cpu_ddp.yaml", config, model_config_file), cwd=ROOT, env=launch_env(MAIN_PROCESS_PORT=str(free_port())), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
            time.sleep(0.5)
        assert metrics.is_file(), "the run never started training"
        assert len(rank_processes(str(config))) >= 3  # accelerate launch + 2 ranks
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 60
        while time.time() < deadline and rank_processes(str(config)):
            time.sleep(0.5)
        left = rank_processes(str(config))
        assert not left, f"processes still running after the launcher was killed: {left}"
        rows = len(metrics.read_text().splitlines())
        time.sleep(2)
        assert len(metrics.read_text().splitlines()) == rows  # nobody trains on
    finally:
        for pid in rank_processes(str(config)):
            os.kill(pid, signal.SIGKILL)
    assert json.loads(metrics.read_text().splitlines()[0])["step"] == 1
