"""Helpers the fault tests share: what a work_dir holds, what a run logged, the one error line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

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


def stops_then_skip_resumes_exactly(config: Path, model_config: Path, error: str, kept: list[int],
                                    steps_total: int, source: str, capsys) -> None:
    """A run of `config` (train_llms.py) stops with the one line `error`, keeping the checkpoints `kept`; with
    `data.on_bad_record=skip` it resumes from the last of them (left byte-identical) and logs, at every step, the
    loss and the `source`'s bad-record count of an uninterrupted skipping run."""
    from llms_trainer.train.run import run
    from tests.train.conftest import RecordingLogger
    from train_llms import main as train_llms

    args = ["--train_config", str(config), "--model_config", str(model_config)]
    assert train_llms(args) == 2
    assert one_error_line(capsys.readouterr().err) == error
    work = Path(yaml.safe_load(config.read_text())["work_dir"])
    assert steps(work) == kept and not ckpt.leftover_dirs(work)
    last = work / f"checkpoint-{kept[-1]}"
    before = file_hashes(last)
    assert train_llms([*args, "data.on_bad_record=skip"]) == 0  # train.resume: auto
    assert f"resumed from {last} at step {kept[-1]}" in capsys.readouterr().out
    assert file_hashes(last) == before
    logger = RecordingLogger()
    full = run(config, ["data.on_bad_record=skip", f"work_dir={work}-full"], str(model_config), logger=logger)
    losses = logged(work, "train/loss")
    assert sorted(losses) == list(range(1, steps_total + 1))
    for step, loss in losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step
    key = f"data/{source}/bad_records"
    assert logged(work, key) == {step: row[key] for step, row in logger.rows if key in row}
