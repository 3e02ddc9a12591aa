"""The demo's summary table reads each stage's metrics.jsonl: steps, first/last loss, last eval, plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("demo_summary", ROOT / "scripts" / "demo_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_has_a_row_per_stage_with_the_logged_figures(tmp_path, capsys):
    sft = tmp_path / "tiny_sft"
    sft.mkdir()
    rows = [{"step": 10, "train/loss": 6.5}, {"step": 20, "train/loss": 5.25, "eval/chat_nll/loss": 5.9},
            {"step": 20, "eval/chat_nll/loss": 5.5}, "cut off by a crash {"]
    (sft / "metrics.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    (sft / "tiny_sft.png").write_bytes(b"png")
    assert load_script().main(["--work-dirs", str(tmp_path)]) == 0
    table = (tmp_path / "demo_summary.md").read_text().splitlines()
    assert len(table) == 2 + 6
    row = next(line for line in table if line.startswith("| SFT |"))
    assert "| 20 | 6.500 | 5.250 | chat_nll/loss 5.5 |" in row and "tiny_sft.png" in row
    assert next(line for line in table if line.startswith("| DPO |")).count("not run") == 1
    assert (tmp_path / "demo_summary.png").read_bytes().startswith(b"\x89PNG")


def test_grpo_row_shows_its_reward_trend(tmp_path):
    grpo = tmp_path / "tiny_grpo"
    grpo.mkdir()
    rewards = [-0.5, 0.0, 0.5, 1.0, 0.25, 0.25, 0.25]  # the first three average 0, the last three 0.25
    rows = [{"step": 5 * i, "train/loss": 0.01, "train/reward": r} for i, r in enumerate(rewards, start=1)]
    rows.append({"step": 35, "eval/grpo/reward": 0.75})
    (grpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    load_script().main(["--work-dirs", str(tmp_path)])
    row = next(line for line in (tmp_path / "demo_summary.md").read_text().splitlines() if line.startswith("| GRPO |"))
    assert "train/reward 0 → 0.25, grpo/reward 0.75" in row
