"""The installed commands ([project.scripts]) are the scripts' own main functions: the same --help and exit
codes, and bundled defaults found in the repository whatever the working directory."""

from __future__ import annotations

import contextlib
import glob
import importlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {  # console script → the repository script that runs the same main (None: it has none)
    "llms-compress": "data/compress_data.py",
    "llms-inspect-mixture": "utils/inspect_mixture.py",
    "llms-train-tokenizer": "utils/train_tokenizer.py",
    "llms-merge-tokenizer": "utils/merge_tokenizer.py",
    "llms-add-chat-tokens": "utils/add_chat_tokens.py",
    "llms-extend-embeddings": "utils/extend_model_token_embeddings.py",
    "llms-train": "train_llms.py",
    "llms-train-reward": "train_reward_model.py",
    "llms-train-rl": "train_rl.py",
    "llms-score-pairs": "utils/score_pairs.py",
    "llms-convert-gguf": "utils/convert_gguf_to_hf.py",
    "llms-viewer": None,
    "llms-propose-policy": "utils/propose_policy.py",
}
COLUMNS = "100"  # argparse wraps help to the terminal width: the same for both sides of a comparison


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def command(name: str):
    """The function a console script calls ("module:function" in pyproject.toml)."""
    module, function = console_scripts()[name].split(":")
    return getattr(importlib.import_module(module), function)


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": COLUMNS, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def call(name: str, args: list[str], prog: str, monkeypatch) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the command's main(args) in this process, with sys.argv[0] = prog."""
    monkeypatch.setattr(sys, "argv", [prog])
    monkeypatch.setenv("COLUMNS", COLUMNS)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = command(name)(args)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_every_tool_is_a_console_script():
    assert set(console_scripts()) == set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_command_help_is_the_script_help(name, tmp_path, monkeypatch):
    code, text, _ = call(name, ["--help"], f"/venv/bin/{name}", monkeypatch)
    assert code == 0 and text.startswith(f"usage: {name} ")
    if SCRIPTS[name] is None:
        return
    proc = run_script(SCRIPTS[name], "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == call(name, ["--help"], str(ROOT / SCRIPTS[name]), monkeypatch)[1]


def test_bundled_defaults_are_found_from_another_directory(tmp_path, monkeypatch):
    from llms_trainer import commands
    from llms_trainer.commands import (
        compress,
        inspect_mixture,
        merge_tokenizer,
        train,
        train_reward,
        train_tokenizer,
        viewer,
    )
    from llms_trainer.config import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    assert commands.REPO_ROOT == REPO_ROOT == ROOT
    mixture = inspect_mixture.parse_args([])
    assert mixture.data == ROOT / "data/pretrain_data"
    assert (mixture.tokenizer / "tokenizer.json").is_file()
    merge = merge_tokenizer.parse_args([])
    assert (Path(merge.base) / "tokenizer.model").is_file() and merge_tokenizer.DEFAULT_REPORT_TEXT.is_file()
    assert Path(merge.output).is_relative_to(ROOT)  # outputs of the tokenizer tools default into the checkout
    assert all(glob.glob(str(pattern)) and output.is_relative_to(ROOT) for pattern, output, _ in compress.BUNDLED)
    assert glob.glob(train_tokenizer.default_data()[0])
    for path in (train.DEMO_CONFIG, train.DEMO_MODEL_CONFIG, train_reward.DEMO_CONFIG, viewer.WEB_PY):
        assert Path(path).is_file(), path


def test_tools_run_from_another_directory(tmp_path, monkeypatch):
    """Compress into a relative output, then inspect it with the default (bundled) tokenizer: the script and
    the command print the same table; a user error is one `error:` line and exit 2 either way."""
    samples = str(ROOT / "data/shuffled_data/pretrain/*.jsonl")
    compressed = run_script("data/compress_data.py", "--input", samples, "--output", "shards", cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    assert sorted(p.parent.name for p in (tmp_path / "shards").glob("*/manifest.json")) == \
        sorted(Path(p).stem for p in glob.glob(samples))
    args = ["--data", "shards", "--tokens", "2000", "--seq-length", "64"]
    script = run_script("utils/inspect_mixture.py", *args, cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    monkeypatch.chdir(tmp_path)
    code, text, _ = call("llms-inspect-mixture", args, "llms-inspect-mixture", monkeypatch)
    assert code == 0 and text == script.stdout and "from 5 sources in shards" in text

    missing = ["--data", "no_such_dir"]
    script = run_script("utils/inspect_mixture.py", *missing, cwd=tmp_path)
    code, _, err = call("llms-inspect-mixture", missing, "llms-inspect-mixture", monkeypatch)
    assert script.returncode == code == 2
    assert err == script.stderr and err.startswith("error: ") and err.count("\n") == 1


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (Linux /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads listening sockets from /proc/net/tcp")
def test_viewer_serves_the_page_on_localhost_only(tmp_path):
    from utils.sampler_viewer.browser import free_port

    port = free_port()
    code = "import sys; from llms_trainer.commands.viewer import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--server.port", str(port), "--server.headless", "true"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline, health = time.monotonic() + 90, None
        while health != "ok" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                health = opener.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read().decode()
        assert health == "ok", proc.poll()
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    assert f"URL: http://127.0.0.1:{port}" in output and "Traceback" not in output
