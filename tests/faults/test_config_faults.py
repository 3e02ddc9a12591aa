"""Config faults: non-finite numbers, trackers that cannot work, contradictory work_dir settings, shipped
configs that would split a run's outputs, and every schedule resuming exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llms_trainer.config import ConfigError, load_config
from llms_trainer.train.run import run
from tests.train.conftest import RecordingLogger
from train_llms import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=.inf"], "key train.lr: Input should be a finite number"),
    (["train.lr=.nan"], "key train.lr: Input should be a finite number"),
    (["train.max_grad_norm=.inf"], "key train.max_grad_norm: Input should be a finite number"),
    (["train.log_with=[tensorbord]"], "key train.log_with.0: 'tensorbord' is not a tracker; use one of tensorboard"),
    (["train.overwrite_work_dir=true"], "key train.overwrite_work_dir: true with train.resume=auto"),
    (["train.lr_scheduler_type=cosine_with_restarts"], "key train.lr_scheduler_type: Input should be"),
])
def test_bad_values_name_the_key(write_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(), overrides)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_tracker_without_its_package_is_refused_by_check(write_config, model_config_file, capsys):
    assert main(["--train_config", str(write_config()), "--model_config", str(model_config_file),
                 "train.log_with=[wandb]", "--check"]) == 2
    assert "train.log_with.0: 'wandb' needs the wandb package" in capsys.readouterr().err


def test_check_refuses_a_fresh_run_into_a_used_work_dir(write_config, model_config_file, capsys):
    config = write_config(train={"num_training_steps": 1})
    run(config, [], str(model_config_file), logger=RecordingLogger())
    assert main(["--train_config", str(config), "--model_config", str(model_config_file), "--check",
                 "train.resume=none"]) == 2
    assert "holds checkpoints of another run (checkpoint-1)" in capsys.readouterr().err


TRAIN_CONFIGS = [p for p in sorted((ROOT / "configs").glob("*_configs/*.yaml")) if p.parent.name not in
                 ("accelerate_configs", "model_configs")]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_keep_every_output_under_work_dir(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_config(str(path.relative_to(ROOT)), ["work_dir=elsewhere"], check_files=False)
    assert cfg.train.img_log_dir is None and cfg.eval.generation_eval_save_path is None
    assert cfg.eval.delta_scores_save_path is None


@pytest.mark.parametrize("kind", ["cosine_with_min_lr", "linear", "constant_with_warmup", "warmup_stable_decay"])
def test_every_schedule_resumes_exactly(kind, write_config, model_config_file, tmp_path):
    common = {"num_training_steps": 6, "num_warmup_steps": 2, "lr_scheduler_type": kind, "num_decay_steps": 2}
    full = write_config("full", train=common, save_interval=3)
    logger = RecordingLogger()
    reference = run(full, [], str(model_config_file), logger=logger)
    lrs = {s: m["train/lr"] for s, m in logger.rows if "train/lr" in m}
    start = 5e-4 if kind == "warmup_stable_decay" else 0.0  # WSD warms up from min_lr
    assert lrs[1] == pytest.approx(start) and lrs[3] == pytest.approx(5e-3)  # warmup, then the peak
    if kind != "constant_with_warmup":
        assert lrs[6] < lrs[3]
    resumed_logger = RecordingLogger()
    resumed = run(full, [f"train.resume={tmp_path / 'full' / 'checkpoint-3'}", f"work_dir={tmp_path / 'again'}"],
                  str(model_config_file), logger=resumed_logger)
    again = {s: m["train/lr"] for s, m in resumed_logger.rows if "train/lr" in m}
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(reference.losses[step], abs=1e-6)
        assert again[step] == pytest.approx(lrs[step], rel=1e-12)
