"""2 "nodes" on localhost equal one process (2-process DDP / ZeRO-2/3 equivalence and resume:
tests/faults/test_resume_backends.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger

ROOT = Path(__file__).resolve().parents[2]
ACC = ROOT / "configs" / "accelerate_configs"
pytestmark = [pytest.mark.dist, pytest.mark.slow]

# One source, one document per row, rows padded to seq_length (token counts differ per rank), no shuffle
# inside a data unit: process r of 2 reads documents r, r+2, ... so a 2-process step with micro-batch 1 and
# accumulation 2 holds the same 4 documents as a 1-process step with micro-batch 2.
DATA = {"concat_multiple_sequence": False, "sequence_sample_mode": "truncation", "pad_to_max": True,
        "seq_length": 48, "shuffle_buffer_records": 1}
STEPS = {"num_training_steps": 4, "gradient_accumulation_steps": 2, "num_warmup_steps": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(extra)
    return env


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def logged_losses(work_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def hf_logits(checkpoint: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = tokenizer("the optimizer updates weights step by step", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def reference(write_config, deterministic_model_config_file, corpus_dir, tmp_path):
    """A one-process run: micro-batch 2 × accumulation 2 for 4 steps; returns (losses, work_dir)."""
    config = write_config("single", sources={"en": str(corpus_dir / "en")}, data=DATA,
                          train={**STEPS, "train_batch_size": 2}, save_interval=2)
    losses = run(config, [], str(deterministic_model_config_file), logger=RecordingLogger()).losses
    return losses, tmp_path / "single"


def test_two_nodes_on_localhost_equal_one_process(reference, write_config, deterministic_model_config_file,
                                                  corpus_dir, tmp_path):
    ref_losses, _ = reference
    config = write_config("nodes", sources={"en": str(corpus_dir / "en")}, data=DATA,
                          train={**STEPS, "train_batch_size": 1}, save_interval=2)
    port = str(free_port())
    nodes = [subprocess.Popen(
        ["sh", str(ROOT / "train_multi_node_llms.sh"), str(ACC / "multi_node_cpu_ddp.yaml"), str(config),
         str(deterministic_model_config_file)],
        cwd=ROOT, env=launch_env(NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                 NPROC_PER_NODE="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=420) for node in nodes]
    for node, (out, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-2000:] + err[-5000:]
    losses = logged_losses(tmp_path / "nodes")
    assert sorted(losses) == [1, 2, 3, 4]
    for step, loss in losses.items():
        assert loss == pytest.approx(ref_losses[step], abs=1e-5)
