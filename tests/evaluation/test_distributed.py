"""Evaluators under 2 real processes (gloo on CPU) give the single-process results on every rank."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation.dist_eval_script import build_model, run_all
from tests.helpers import write_jsonl

SCRIPT = Path(__file__).with_name("dist_eval_script.py")
COMMON = "num_processes: 2\nnum_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\nrdzv_backend: static\n"
DDP_CPU = "distributed_type: MULTI_GPU\nuse_cpu: true\n" + COMMON
ZERO3 = ("distributed_type: DEEPSPEED\nuse_cpu: false\ndeepspeed_config:\n  zero_stage: 3\n"
         "  gradient_accumulation_steps: 1\n  zero3_init_flag: false\n" + COMMON)
QUESTIONS = [
    {"question": "Q1?\\nA. x\\nB. y", "answer": "A", "source": "s1"},
    {"question": "Q2?\nA. x\nB. y\nC. z\nD. w", "answer": "C", "source": "s2"},
    {"question": "Q3?\nA. x\nB. y\nC. z", "answer": "B", "source": "s1"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, tokenizer_dir: Path, out_dir: Path, use_cpu_env: bool) -> None:
    (out_dir / "accelerate.yaml").write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(out_dir / "accelerate.yaml"),
               "--main_process_port", str(free_port()), str(SCRIPT), str(tokenizer_dir), str(out_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def single_process(tiny_tokenizer, accelerator, out_dir: Path) -> tuple[dict, list]:
    metrics = run_all(build_model(tiny_tokenizer), tiny_tokenizer, accelerator, out_dir)
    return metrics, json.loads((out_dir / "gen" / "step_3.json").read_text(encoding="utf-8"))


def check_against_single_process(tiny_tokenizer_dir, tiny_tokenizer, accelerator, tmp_path, config, cpu_env):
    for name in ("one", "two"):
        write_jsonl(tmp_path / name / "knowledge.jsonl", QUESTIONS)
    expected, expected_outputs = single_process(tiny_tokenizer, accelerator, tmp_path / "one")
    launch(config, tiny_tokenizer_dir, tmp_path / "two", cpu_env)
    for rank in (0, 1):
        got = json.loads((tmp_path / "two" / f"metrics_rank{rank}.json").read_text(encoding="utf-8"))
        assert got["world"] == 2
        assert got["metrics"] == pytest.approx(expected, rel=1e-5)
    outputs = json.loads((tmp_path / "two" / "gen" / "step_3.json").read_text(encoding="utf-8"))
    assert outputs == expected_outputs


@pytest.mark.dist
def test_ddp_two_processes_match_single_process(tiny_tokenizer_dir, tiny_tokenizer, accelerator, tmp_path):
    check_against_single_process(tiny_tokenizer_dir, tiny_tokenizer, accelerator, tmp_path, DDP_CPU, True)


@pytest.mark.dist
@pytest.mark.slow
def test_zero3_two_processes_match_single_process(tiny_tokenizer_dir, tiny_tokenizer, accelerator, tmp_path):
    """ZeRO-3 hangs unless every rank runs the same forwards (5 prompts on 2 ranks need a dummy)."""
    pytest.importorskip("deepspeed")
    check_against_single_process(tiny_tokenizer_dir, tiny_tokenizer, accelerator, tmp_path, ZERO3, False)
