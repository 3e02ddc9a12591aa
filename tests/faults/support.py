"""Helpers the fault tests share: what a work_dir holds, what a run logged, the one error line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llms_trainer.train import checkpoint as ckpt


def steps(work: Path) -> list[int]:
    """Steps of the complete checkpoints in work_dir, oldest first."""
    return [s for s, _ in ckpt.complete_checkpoints(work)]


def file_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def logged(work_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of one metric in work_dir/metrics.jsonl (a re-logged step: its last value)."""
    rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def one_error_line(stderr: str) -> str:
    """The last line of stderr, which must be its only `error:` line."""
    lines = stderr.strip().splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("error: "), stderr[-3000:]
    return lines[-1]
