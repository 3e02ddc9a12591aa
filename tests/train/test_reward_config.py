"""Reward stage config and command line: epochs → steps, the original keys, errors naming the key or the
file:line, and train_reward_model.py / .sh forcing the reward stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llms_trainer.config import ConfigError
from llms_trainer.train.run import run
from llms_trainer.train.stages import load_config
from tests.helpers import write_jsonl
from tests.train.conftest import RecordingLogger
from tests.train.reward_support import preference_records, reward_config, write_pairs
from train_reward_model import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl", 50, 0)


def test_epochs_alone_give_the_full_steps_the_data_holds(tmp_path, tiny_tokenizer_dir, pairs_file,
                                                        deterministic_model_config_file):
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", {"pairs": str(pairs_file)},
                           train={"num_training_epochs": 3, "gradient_accumulation_steps": 2, "train_batch_size": 8},
                           data={"batch_size": None, "dataset_map_num_proc": 4})
    result = run(config, [], str(deterministic_model_config_file), logger=RecordingLogger())
    assert result.step == 3 * 50 // 8 // 2 == 9 and result.stop_reason == "num_training_steps reached"
    saved = yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())
    assert saved["train"]["num_training_steps"] == 9 and saved["stage"] == "reward"


def test_data_batch_size_is_the_pairs_per_micro_batch(tmp_path, tiny_tokenizer_dir, pairs_file,
                                                      deterministic_model_config_file):
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs_file)], data={"batch_size": 5},
                           train={"num_training_steps": 2, "num_training_epochs": None})
    run(config, [], str(deterministic_model_config_file), logger=RecordingLogger())
    saved = yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())
    assert saved["train"]["train_batch_size"] == 5
    state = (tmp_path / "rm" / "checkpoint-2" / "trainer_state" / "stage_rank0.json").read_text()
    assert '"batches": 2' in state and '"batch_size": 5' in state


@pytest.mark.parametrize("overrides, message", [
    (["train.train_batch_size=4"], "key data.batch_size: 8 pairs per micro-batch, but train.train_batch_size is 4"),
    (["train.num_training_epochs=null"], "key train.num_training_steps: set it, or train.num_training_epochs"),
    (["eval.eval_methods=[nll]", "eval.nll_dataset=x"], "key eval.eval_methods: the reward stage evaluates"),
    (["data.reward_model_datasets=/nowhere/*.jsonl"], "key data.reward_model_datasets: '/nowhere/*.jsonl' matches"),
    (["data.reward_model_datasets=null"], "key data.reward_model_datasets: no preference-pair files"),
    (["train.train_and_eval=true"], "key eval.test_reward_model_acc_files: empty while train.train_and_eval"),
    (["eval.test_reward_model_acc_files={a: /nowhere.jsonl}"], "key eval.test_reward_model_acc_files: '/nowhere"),
    (["data.on_bad_record=maybe"], "key data.on_bad_record: Input should be 'error' or 'skip'"),
    (["data.data={en: x}"], "key data.data: the reward stage reads data.reward_model_datasets"),
])
def test_bad_reward_config_names_the_key(tmp_path, tiny_tokenizer_dir, pairs_file, overrides, message):
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs_file)])
    with pytest.raises(ConfigError) as err:
        load_config(config, overrides)
    assert str(err.value).startswith(str(config)) and message in str(err.value)


def test_other_stages_still_need_num_training_steps(write_config):
    with pytest.raises(ConfigError, match="key train.num_training_steps: required"):
        load_config(write_config(), ["train.num_training_steps=null"])


def test_original_style_keys_load(tmp_path, tiny_tokenizer_dir, pairs_file):
    """data.reward_model_datasets as {name: path}, eval files as a list, the compatibility keys."""
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", {"rm_oa_hh": str(pairs_file)}, [str(pairs_file)],
                           data={"dataset_map_num_proc": 16},
                           train={"downscale_weight": True, "num_training_epochs": 1},
                           eval={"save_delta_scores": True, "delta_scores_save_path": str(tmp_path / "deltas")})
    cfg = load_config(config)
    assert cfg.stage_name() == "reward" and cfg.train.num_training_steps is None
    assert cfg.eval.test_reward_model_acc_files == [str(pairs_file)] and cfg.data.batch_size == 8


def test_a_run_reads_and_validates_its_config_once(tmp_path, tiny_tokenizer_dir, pairs_file,
                                                   deterministic_model_config_file, monkeypatch):
    """From argv through the script that forces its stage, the command line and the run, the YAML is read and
    validated once (--check too); the run writes the config it was handed, the forced stage included."""
    from llms_trainer.config import loading

    calls = {"read": 0, "validated": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(loading, "parse_overrides", counting("read", loading.parse_overrides))  # once per read
    monkeypatch.setattr(loading, "check_config", counting("validated", loading.check_config))
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", {"pairs": str(pairs_file)},
                           train={"num_training_steps": 1, "num_training_epochs": None, "num_warmup_steps": 0})
    args = ["--train_config", str(config), "--model_config", str(deterministic_model_config_file), "train.lr=1e-3"]
    assert main([*args, "--check"]) == 0
    assert calls == {"read": 1, "validated": 1}
    assert main(args) == 0
    assert calls == {"read": 2, "validated": 2}
    saved = yaml.safe_load((tmp_path / "rm" / "config.yaml").read_text())
    assert saved["stage"] == "reward" and saved["train"]["lr"] == 1e-3
    assert saved["_run"]["overrides"] == ["train.lr=1e-3", "stage=reward"]


def test_cli_reports_a_bad_record_by_file_and_line_and_skip_counts_it(tmp_path, tiny_tokenizer_dir,
                                                                     deterministic_model_config_file, capsys):
    records = preference_records(20, 1)
    bad = write_jsonl(tmp_path / "bad.jsonl", records[:2] + [{"prompt": "p", "selected": "s"}] + records[2:])
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(bad)],
                           train={"num_training_steps": 1, "num_training_epochs": None, "num_warmup_steps": 0})
    args = ["--train_config", str(config), "--model_config", str(deterministic_model_config_file)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:3: no preference pair" in err[0] and "data.on_bad_record: skip" in err[0]
    assert [p.name for p in (tmp_path / "rm").iterdir()] == [".lock"]  # nothing written but the run's lock

    assert main([*args, "data.on_bad_record=skip"]) == 0
    assert "20 pairs (bad.jsonl 20); 1 bad lines skipped" in capsys.readouterr().out


def test_cli_forces_the_reward_stage(tmp_path, tiny_tokenizer_dir, pairs_file, deterministic_model_config_file,
                                     capsys):
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs_file)])
    raw = yaml.safe_load(config.read_text())
    del raw["stage"]
    config.write_text(yaml.safe_dump(raw))  # an original config names no stage
    model = ["--model_config", str(deterministic_model_config_file)]
    assert main(["--train_config", str(config), *model, "--check"]) == 0
    assert "ok (stage reward, 2 epoch(s), steps counted from the data at start" in capsys.readouterr().out
    assert main(["--train_config", str(config), *model, "--check", "stage=sft"]) == 2
    assert "key stage: 'sft', but this script runs the reward stage" in capsys.readouterr().err


def test_launch_scripts_validate_first_and_print_their_help(tmp_path, tiny_tokenizer_dir, pairs_file,
                                                            deterministic_model_config_file):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    config = reward_config(tmp_path, tiny_tokenizer_dir, "rm", [str(pairs_file)])
    proc = subprocess.run(["sh", str(ROOT / "train_reward_model.sh"), str(ROOT / "configs/accelerate_configs/cpu.yaml"),
                           str(config), str(deterministic_model_config_file), "data.batch_size=0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "key data.batch_size: Input should be greater than or equal to 1" in proc.stderr
    for script in ("train_reward_model.sh", "train_multi_node_reward_model.sh"):
        proc = subprocess.run(["sh", str(ROOT / script), "--help"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "train_reward_model" in proc.stdout and "set -eu" not in proc.stdout
    proc = subprocess.run([sys.executable, str(ROOT / "train_reward_model.py"), "--help"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0
    assert "data.on_bad_record (default: 'error')" in proc.stdout and "data.batch_size (default: None)" in proc.stdout
