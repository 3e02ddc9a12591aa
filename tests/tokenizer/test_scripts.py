"""The four scripts run as `python utils/X.py` from the repo root; bad input exits 2 with one error line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.tokenizer.support import ROOT, load_script

SCRIPTS = ("train_tokenizer", "merge_tokenizer", "add_chat_tokens", "extend_model_token_embeddings")


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_runs_from_the_repo_root(name):
    result = subprocess.run([sys.executable, f"utils/{name}.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "--output" in result.stdout


def test_merge_and_chat_scripts_print_what_they_wrote(tmp_path, capsys, tiny_tokenizer_dir, zh_model_path,
                                                      held_out_zh):
    merge = load_script("merge_tokenizer").main
    assert merge(["--base", str(tiny_tokenizer_dir), "--add", str(zh_model_path), "--output", str(tmp_path / "m"),
                  "--report-text", str(held_out_zh)]) == 0
    out = capsys.readouterr().out
    assert "base" in out and "characters per token" in out and f"wrote {tmp_path / 'm'}" in out
    chat = load_script("add_chat_tokens").main
    assert chat(["--tokenizer", str(tmp_path / "m"), "--output", str(tmp_path / "c")]) == 0
    assert "<|endofchat|>=" in capsys.readouterr().out
    assert merge(["--base", str(tmp_path / "nope"), "--add", str(zh_model_path),
                  "--output", str(tmp_path / "m2")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such file or directory\n"
    assert chat(["--tokenizer", str(tmp_path / "m"), "--output", str(tmp_path / "c")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "m"]
