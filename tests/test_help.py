"""Every script's --help is complete: exit 0, the whole header, each option's default shown."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON_SCRIPTS = ["train_llms.py", "train_reward_model.py", "data/compress_data.py", "utils/add_chat_tokens.py",
                  "utils/extend_model_token_embeddings.py", "utils/inspect_mixture.py", "utils/merge_tokenizer.py",
                  "utils/train_tokenizer.py", "utils/score_pairs.py", "train_rl.py", "utils/propose_policy.py"]
SHELL_SCRIPTS = ["train_llms.sh", "train_multi_node_llms.sh", "train_reward_model.sh",
                 "train_multi_node_reward_model.sh", "train_rl.sh", "train_multi_node_rl.sh"]


def _parser_source(script: str) -> str:
    """Text of the module holding the script's docstring and parser: the llms_trainer/commands/ module a
    wrapper script imports `main` from, else the script itself."""
    tree = ast.parse((ROOT / script).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llms_trainer.commands.") \
                and any(alias.name == "main" for alias in node.names):
            return (ROOT / f"{node.module.replace('.', '/')}.py").read_text()
    return (ROOT / script).read_text()


def _no_default(script: str, option: str) -> bool:
    """True when the script's add_argument for `option` has no default (None): nothing to show."""
    source = _parser_source(script)
    start = source.find(f'"{option}"')
    call = source[start: source.find(")\n", start)]
    return "default=" not in call


@pytest.mark.parametrize("script", PYTHON_SCRIPTS)
def test_python_script_help_shows_every_default(script, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    doc = ast.get_docstring(ast.parse(_parser_source(script)))
    assert doc.splitlines()[-1].strip() in proc.stdout  # the whole module text, verbatim
    section = proc.stdout.split("options:")[1]
    options = [line.split()[0] for line in section.splitlines()
               if line.startswith("  --") and len(line.split()) > 1 and line.split()[1].isupper()]
    for option in options:  # an option taking a value shows its default (or has none to show)
        block = section.split(f"  {option} ", 1)[1].split("\n  -", 1)[0]
        assert "default" in block or "required" in block or _no_default(script, option), (script, option)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_help_is_the_whole_header(script):
    proc = subprocess.run(["sh", str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    header = [line[2:] if line.startswith("# ") else line[1:] for line in
              (ROOT / script).read_text().splitlines()[1:] if line.startswith("#")]
    text = proc.stdout.splitlines()
    assert text == header[: len(text)] and len(text) >= 4
    assert not any(line.startswith(("set ", "if ")) for line in text)
    assert text[-1].rstrip().endswith((".", ")"))
