"""Output files: every file a command writes, the weights included, has the mode the umask gives (checkpoints,
extended models, converted models); a save that hits the file-size limit while writing optimizer.pt says so in
one line and keeps the previous checkpoint."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.support import file_hashes, one_error_line, steps
from tests.train.test_distributed import ROOT, launch_env

BIN = Path(sys.executable).parent


def under_umask(umask: str, *command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`command` run by a shell that set `umask` first."""
    script = f"umask {umask}; exec " + " ".join(f"'{part}'" for part in command)
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=timeout)


def modes(folder: Path) -> dict[str, int]:
    """{relative path: permission bits} of every file and directory under folder."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*"))
            if p.name != ".lock"}


def assert_modes(folder: Path, file_mode: int, dir_mode: int) -> None:
    found = modes(folder)
    assert any(name.endswith("model.safetensors") for name in found), found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (dir_mode if (folder / name).is_dir() else file_mode)}
    assert not wrong, wrong


@pytest.mark.parametrize("umask, file_mode, dir_mode", [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_checkpoint_files_weights_included_follow_the_umask(umask, file_mode, dir_mode, write_config,
                                                            model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    proc = under_umask(umask, sys.executable, "train_llms.py", "--train_config", str(config), "--model_config",
                       str(model_config_file))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_modes(tmp_path / "run" / "checkpoint-2", file_mode, dir_mode)


def test_extended_and_converted_models_follow_the_umask(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir

    chat = add_chat_tokens_to_dir(tiny_tokenizer_dir, tmp_path / "chat_tok") and tmp_path / "chat_tok"
    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))), hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))
    proc = under_umask("022", str(BIN / "llms-extend-embeddings"), "--model", str(tmp_path / "base"),
                       "--old-tokenizer", str(tiny_tokenizer_dir), "--new-tokenizer", str(chat), "--output",
                       str(tmp_path / "extended"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_modes(tmp_path / "extended", 0o644, 0o755)

    pytest.importorskip("gguf", reason="the GGUF converter needs the gguf package")
    from tests.tools.test_convert_gguf import write_tiny_llama

    source = write_tiny_llama(tmp_path / "tiny.Q8_0.gguf")
    proc = under_umask("022", str(BIN / "llms-convert-gguf"), "--gguf", str(source), "--output",
                       str(tmp_path / "converted"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_modes(tmp_path / "converted", 0o644, 0o755)


def test_file_size_limit_on_optimizer_pt_is_named_and_keeps_the_previous_checkpoint(write_config,
                                                                                   model_config_file, tmp_path):
    config = write_config("run", train={"num_training_steps": 2})
    command = [sys.executable, "train_llms.py", "--train_config", str(config), "--model_config",
               str(model_config_file)]
    first = subprocess.run(command, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    work = tmp_path / "run"
    kept = file_hashes(work / "checkpoint-2")
    weights = (work / "checkpoint-2" / "model.safetensors").stat().st_size
    optimizer = (work / "checkpoint-2" / "trainer_state" / "optimizer.pt").stat().st_size
    limit_kib = (weights + optimizer) // 2 // 1024  # the weights fit, the optimizer state does not
    assert weights < limit_kib * 1024 < optimizer
    proc = subprocess.run(["bash", "-c", f"ulimit -f {limit_kib}; exec " + " ".join(command)
                           + " train.num_training_steps=4"], cwd=ROOT, env=launch_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = one_error_line(proc.stderr)
    assert f"checkpoint-4 (File too large: a trainer-state file reached the file-size limit of {limit_kib * 1024} " \
           "bytes (ulimit -f)" in line and "earlier checkpoints are kept" in line, line
    assert "enforce fail" not in line and "unexpected pos" not in line
    assert steps(work) == [2] and not list(work.glob("checkpoint-4*"))
    assert file_hashes(work / "checkpoint-2") == kept
    assert json.loads((work / "checkpoint-2" / "trainer_state" / "state.json").read_text())["step"] == 2
