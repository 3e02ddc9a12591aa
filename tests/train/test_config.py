"""Config loading: seed keys, overrides, and one clear error naming the key for each kind of bad input."""

from __future__ import annotations

import pytest
import yaml

from llms_trainer.config import ConfigError
from llms_trainer.train.stages import load_config
from train_llms import main


def test_seed_keys_load_and_old_spelling_maps(write_config, tmp_path):
    (tmp_path / "gen.jsonl").write_text('{"content": "hello"}\n')
    config = write_config(
        data={"pad_to_max": False, "sequence_sample_mode": "none", "num_sequences": 10, "split_by_shard": False},
        train={"initializer_range": 0.01, "resize_model_vocab_size": False, "train_num_workers": 0,
               "prefetch_factor": 2, "train_and_eval": True, "gradient_checkpointing_enable": False,
               "use_lora": False, "target_modules": ["q_proj", "v_proj"], "save_total_limit": 3,
               "img_log_dir": "log", "img_log_name": "x", "train_token_embeddings_only": False,
               "token_embedding_layer_name": "embed_tokens", "num_training_epochs": 2, "downscale_weight": False},
        eval={"eval_methods": ["generation_eval"], "generation_dataset": {"gen": str(tmp_path / "gen.jsonl")},
              "genration_eval_save_path": "out/gen"})
    cfg = load_config(config)
    assert cfg.eval.generation_eval_save_path == "out/gen"
    assert cfg.train.num_training_epochs == 2 and cfg.data.num_sequences == 10


def test_overrides_set_nested_keys_with_yaml_values(write_config):
    cfg = load_config(write_config(), ["train.lr=1e-3", "train.target_modules=[q_proj]", "log_interval=7",
                                       "train.save_total_limit=null"])
    assert cfg.train.lr == 1e-3 and cfg.train.target_modules == ["q_proj"]
    assert cfg.log_interval == 7 and cfg.train.save_total_limit is None


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "key train.lrr: unknown key"),
    (["train.lr=fast"], "key train.lr: Input should be a valid number"),
    (["train.gradient_accumulation_steps=0"], "key train.gradient_accumulation_steps: Input should be greater"),
    (["data.data.en=/nowhere/*.zst"], "key data.data.en: '/nowhere/*.zst' matches nothing"),
    (["data.tokenizer_path=./missing_tok"], "key data.tokenizer_path: './missing_tok' does not exist"),
    (["train.min_lr=1.0"], "key train.min_lr: 1.0 is above train.lr"),
    (["train.use_lora=true", "train.train_token_embeddings_only=true"], "key train.use_lora: cannot be combined"),
    (["eval.eval_methods=[nll]"], "key eval.nll_dataset: required by eval method nll_eval"),
    (["eval.eval_methods=[bleu]"], "key eval.eval_methods.0: 'bleu' is not one of"),
    (["train.train_and_eval=true"], "key eval.eval_methods: empty while train.train_and_eval is true"),
    (["data.sample_policy_file=/nowhere.json"], "key data.sample_policy_file: /nowhere.json: cannot read"),
])
def test_bad_config_names_file_and_key(write_config, overrides, message):
    config = write_config()
    with pytest.raises(ConfigError) as err:
        load_config(config, overrides)
    assert str(err.value).startswith(str(config))
    assert message in str(err.value)


def test_policy_with_unknown_source_is_an_error(write_config, tmp_path):
    (tmp_path / "policy.json").write_text('{"en": 1, "fr": 2}')
    with pytest.raises(ConfigError, match="data.sample_policy_file: .*'fr' is not a configured source"):
        load_config(write_config(data={"sample_policy_file": str(tmp_path / "policy.json")}))


def test_cli_bad_input_exits_2_with_one_line(write_config, model_config_file, capsys):
    assert main(["--train_config", str(write_config()), "--model_config", str(model_config_file),
                 "train.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "train.lrr" in err[0]
    assert main(["--train_config", str(write_config()), "--model_config", "/nowhere.json"]) == 2
    assert "--model_config: '/nowhere.json' does not exist" in capsys.readouterr().err


def test_missing_model_source_is_an_error(write_config, capsys):
    assert main(["--train_config", str(write_config())]) == 2
    assert "train.ckpt: null and no --model_config" in capsys.readouterr().err


def test_resolved_config_is_saved(write_config, model_config_file, tmp_path):
    from llms_trainer.train.run import run
    from tests.train.conftest import RecordingLogger

    run(write_config(train={"num_training_steps": 1}), ["train.lr=0.001"], str(model_config_file),
        logger=RecordingLogger())
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.001 and saved["train"]["max_grad_norm"] == 1.0
    assert saved["_run"]["overrides"] == ["train.lr=0.001"]


def test_launch_script_rejects_bad_config_before_launching(write_config, model_config_file):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["sh", str(root / "train_llms.sh"), str(root / "configs/accelerate_configs/cpu_ddp.yaml"),
                           str(write_config()), str(model_config_file), "train.lr=-1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "key train.lr: Input should be greater than 0" in proc.stderr


def test_shipped_config_finds_its_bundled_inputs_from_any_directory(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    cfg = load_config(root / "configs/pretrain_configs/tiny_demo.yaml", check_data=False)
    assert cfg.data.tokenizer_path == str(root / "configs/tokenizers/demo_base")
    assert cfg.eval.nll_dataset == str(root / "eval_data/pretrain/nll.jsonl")
    assert cfg.work_dir == "work_dirs/tiny_demo"  # outputs stay where the user runs
    (tmp_path / "configs/tokenizers/demo_base").mkdir(parents=True)  # a local file of that name wins
    assert load_config(root / "configs/pretrain_configs/tiny_demo.yaml", check_data=False).data.tokenizer_path \
        == "configs/tokenizers/demo_base"
