"""Config faults: non-finite numbers, trackers that cannot work, contradictory work_dir settings, shipped
configs that would split a run's outputs, and every schedule resuming exactly."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from llms_trainer.config import ConfigError
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
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


def _config_file(tmp_path: Path, write_config, kind: str) -> tuple[str, list[str]]:
    """(the --train_config argument, overrides) of one kind of bad config."""
    texts = {"not UTF-8": b"train:\n  lr: 1.0e-3  # caf\xe9\n", "not YAML": b"train: [lr: 1\n",
             "not a mapping": b"- data\n- train\n"}
    if kind in texts:
        (tmp_path / "bad.yaml").write_bytes(texts[kind])
        return str(tmp_path / "bad.yaml"), []
    if kind == "missing file":
        return str(tmp_path / "nowhere.yaml"), []
    if kind == "a directory":
        return str(tmp_path), []
    config = str(write_config())
    if kind == "policy file not UTF-8":
        (tmp_path / "policy.json").write_bytes(b'{"en": 1, "zh": 1} \xff')
        return config, [f"data.sample_policy_file={tmp_path / 'policy.json'}"]
    return config, {"override without =": ["train.lr"], "override below a value": ["train.lr.peak=1"]}[kind]


@pytest.mark.parametrize("kind, message", [
    ("missing file", r".*nowhere\.yaml: cannot read config \(No such file or directory\)"),
    ("a directory", r".*: cannot read config \(Is a directory\)"),
    ("not UTF-8", r".*bad\.yaml: not UTF-8 text \(byte 0xe9 on line 2\); save the file as UTF-8"),
    ("not YAML", r".*bad\.yaml: not valid YAML at line 2, column 1 \(expected ',' or '\]', but got '<stream end>'\)"),
    ("not a mapping", r".*bad\.yaml: expected a mapping of sections \(data, train, eval, \.\.\.\)"),
    ("override without =", r"override 'train\.lr': expected key\.sub=value"),
    ("override below a value", r".*run\.yaml: key train\.lr: is a value, cannot set train\.lr\.peak"),
    ("policy file not UTF-8", r".*key data\.sample_policy_file: .*policy\.json: sample_policy_file is not JSON .*"),
])
def test_each_kind_of_bad_config_file_is_one_error_line_and_writes_nothing(kind, message, write_config,
                                                                          model_config_file, tmp_path, capsys):
    config, overrides = _config_file(tmp_path, write_config, kind)
    for check in ([], ["--check"]):  # the launchers run --check first; a run started directly checks too
        assert main(["--train_config", config, "--model_config", str(model_config_file), *check, *overrides]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and re.fullmatch(f"error: {message}", err[0]), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [
    (b'{"model_type": "llama", "hidden_size": 64, "name": "caf\xe9"}', r"cannot read '.*' \(.*can't decode byte"),
    (b'{"model_type": "llama", "hidden_size": 64,', r"cannot read '.*' \(Expecting property name"),
    (b'{"hidden_size": 64}', r"'.*' needs a mapping with model_type \(e\.g\. llama\)"),
])
def test_bad_model_config_file_is_one_error_line(text, message, write_config, tmp_path, capsys):
    (tmp_path / "model.json").write_bytes(text)
    assert main(["--train_config", str(write_config()), "--model_config", str(tmp_path / "model.json")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.fullmatch(f"error: --model_config: {message}.*", err[0]), err
    assert [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]  # nothing written but the run's lock
