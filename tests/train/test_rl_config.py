"""train_rl.py and the dpo/grpo config sections: the stage must be dpo or grpo, bad input stops before training
with one line naming the key or file:line (prompt files, reward functions, group size, missing reward), and
every shipped RL config validates."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_jsonl
from tests.train.rl_support import chat_model_config, chat_tokenizer_dir, grpo_config, rl_config, write_pairs
from train_rl import main

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here
ROOT = Path(__file__).resolve().parents[2]


def run_rl(config: Path, model_config: Path, *extra: str) -> int:
    return main(["--train_config", str(config), "--model_config", str(model_config), *extra])


@pytest.fixture
def dpo_file(tmp_path, chat_tokenizer_dir) -> Path:
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8, 0)
    return rl_config(tmp_path, chat_tokenizer_dir, "dpo", "dpo", {"datasets": str(pairs)})


@pytest.mark.parametrize("overrides, message", [
    (["stage=null"], "key stage: missing; this script runs one of dpo, grpo: set stage: dpo"),
    (["stage=reward"], "key stage: 'reward'; this script runs one of dpo, grpo"),
    (["dpo.datasets=null"], "key dpo.datasets: no preference-pair files"),
    (["dpo.datasets=/nowhere/*.jsonl"], "key dpo.datasets: '/nowhere/*.jsonl' matches nothing"),
    (["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"], "key dpo.label_smoothing: applies to the sigmoid and robust"),
    (["dpo.loss_type=kto"], "key dpo.loss_type: Input should be 'sigmoid', 'ipo', 'hinge' or 'robust'"),
    (["dpo.beta=0"], "key dpo.beta: Input should be greater than 0"),
    (["train.train_and_eval=true"], "key eval.eval_methods: empty while train.train_and_eval is true"),
    (["data.data={en: x}"], "key data.data: the dpo stage reads dpo.datasets"),
    (["grpo={prompts: x}"], "key grpo: options of the grpo stage, but this run's stage is dpo"),
])
def test_dpo_config_errors_name_the_key(dpo_file, chat_model_config, capsys, overrides, message):
    assert run_rl(dpo_file, chat_model_config, "--check", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("overrides, message", [
    (["grpo.num_generations=1"], "key grpo.num_generations: Input should be greater than or equal to 2"),
    (["grpo.num_generations=3"], "key grpo.num_generations: 3 must divide the completions of one optimizer step"),
    (["grpo.reward_funcs=[]"], "key grpo.reward_funcs: no reward: set grpo.reward_model"),
    (["grpo.reward_funcs=[{name: no_such_module_here:f}]"],
     "key grpo.reward_funcs.0.name: cannot import 'no_such_module_here' (ModuleNotFoundError"),
    (["grpo.reward_funcs=[{name: json:no_such_function}]"], "key grpo.reward_funcs.0.name: 'json' has no function"),
    (["grpo.reward_funcs=[{name: json:dumps}]"], None),  # json.dumps(obj, *, ...) cannot take two positionals
    (["grpo.reward_funcs=[{name: oops}]"], "key grpo.reward_funcs.0.name: 'oops' is not 'module:function'"),
    (["grpo.reward_model=/nowhere"], "key grpo.reward_model: '/nowhere' is not a checkpoint directory"),
    (["grpo.prompts=null"], "key grpo.prompts: no prompt files"),
    (["grpo.max_new_tokens=64"], "key grpo.max_new_tokens: 64 leaves no room for a prompt in data.seq_length 64"),
    (["grpo.scale_rewards=mean"], "key grpo.scale_rewards: Input should be 'group', 'batch' or 'none'"),
    (["train.num_training_epochs=2"], "key train.num_training_epochs: the grpo stage draws prompts endlessly"),
])
def test_grpo_config_errors_name_the_key(tmp_path, chat_tokenizer_dir, chat_model_config, capsys, overrides,
                                         message):
    if message is None:
        message = "key grpo.reward_funcs.0.name: 'json:dumps' must accept f(prompts, completions, **columns)"
    assert run_rl(grpo_config(tmp_path, chat_tokenizer_dir, "g"), chat_model_config, "--check", *overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_normalising_needs_the_reward_statistics(tmp_path, chat_tokenizer_dir, chat_model_config, capsys):
    import shutil

    rm = tmp_path / "rm"
    shutil.copytree(chat_tokenizer_dir, rm)  # a reward checkpoint's tokenizer (its weights are not read here)
    (rm / "config.json").write_text(json.dumps({"model_type": "llama"}))
    config = grpo_config(tmp_path, chat_tokenizer_dir, "g", {"reward_model": str(rm), "normalize_reward_model": True})
    assert run_rl(config, chat_model_config, "--check") == 2
    assert "key grpo.normalize_reward_model: " in capsys.readouterr().err
    (rm / "config.json").write_text(json.dumps({"model_type": "llama", "reward_mean": 0.5, "reward_std": 2.0}))
    assert run_rl(config, chat_model_config, "--check") == 0


@pytest.mark.parametrize("lines, message", [
    ([], "prompts.jsonl: no prompts (the file is empty)"),
    ([{"prompt": "hello"}, "{not json", {"prompt": "x"}], "prompts.jsonl:2: not JSON"),
    ([{"prompt": "  "}], "prompts.jsonl:1: prompt must be a non-empty string"),
    ([{"text": "hi"}], "prompts.jsonl:1: no prompt (expected a 'prompt' string or a 'messages' list"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
     "prompts.jsonl:1: the last message must be a user turn"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
     "prompts.jsonl:1: turn 2: 'user' where 'assistant' belongs"),
])
def test_bad_prompt_files_stop_at_setup_naming_file_and_line(tmp_path, chat_tokenizer_dir, chat_model_config,
                                                             capsys, lines, message):
    config = grpo_config(tmp_path, chat_tokenizer_dir, "g")
    write_jsonl(tmp_path / "prompts.jsonl", lines)  # replaces the good prompts grpo_config wrote
    assert run_rl(config, chat_model_config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key grpo.prompts: " in err[0] and message in err[0], err
    assert not (tmp_path / "g" / "config.yaml").exists()  # stopped before the run wrote anything


def test_a_reward_function_that_rejects_the_prompt_columns_stops_at_setup(tmp_path, chat_tokenizer_dir,
                                                                        chat_model_config, capsys):
    (tmp_path / "strict.py").write_text("def f(prompts, completions):\n    return [0.0] * len(completions)\n")
    config = grpo_config(tmp_path, chat_tokenizer_dir, "g", {"reward_funcs": [{"name": f"{tmp_path}/strict.py:f"}]})
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a b", "answer": "4"}])
    assert run_rl(config, chat_model_config) == 2
    err = capsys.readouterr().err
    assert "key grpo.reward_funcs.0.name: " in err and "and the prompt columns answer" in err


def test_a_reward_function_returning_garbage_stops_the_run_with_one_line(tmp_path, chat_tokenizer_dir,
                                                                       chat_model_config, capsys):
    (tmp_path / "bad.py").write_text("def f(prompts, completions, **columns):\n    return [1.0]\n")
    config = grpo_config(tmp_path, chat_tokenizer_dir, "g", {"reward_funcs": [{"name": f"{tmp_path}/bad.py:f"}]})
    assert run_rl(config, chat_model_config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "returned 1 values for 16 completions" in err[-1]


def test_columns_reach_reward_functions(tmp_path, chat_tokenizer_dir, chat_model_config):
    (tmp_path / "seen.py").write_text(
        "import json\n"
        "def f(prompts, completions, answer, **columns):\n"
        f"    open({str(tmp_path / 'seen.jsonl')!r}, 'a').write(json.dumps([prompts, answer]) + '\\n')\n"
        "    return [float(a == 'x') for a in answer]\n")
    config = grpo_config(tmp_path, chat_tokenizer_dir, "g", {"reward_funcs": [{"name": f"{tmp_path}/seen.py:f"}]},
                         train={"num_training_steps": 1})
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "one", "answer": "x"},
                                             {"messages": [{"role": "system", "content": "be brief"},
                                                           {"role": "user", "content": "two"}], "answer": "y"}])
    assert run_rl(config, chat_model_config) == 0
    prompts, answers = json.loads((tmp_path / "seen.jsonl").read_text().splitlines()[0])
    assert sorted(set(zip(prompts, answers, strict=True))) == [("be brief\ntwo", "y"), ("one", "x")]
    assert prompts.count("one") == 8  # a group: num_generations completions of one prompt


RL_CONFIGS = sorted((ROOT / "configs" / "rl_configs").glob("*.yaml"))


def test_the_rl_configs_are_shipped():
    assert {p.name for p in RL_CONFIGS} == {"dpo_llama.yaml", "grpo_llama.yaml", "dpo_tiny_demo.yaml",
                                            "grpo_tiny_demo.yaml"}


@pytest.mark.parametrize("path", RL_CONFIGS, ids=lambda p: p.name)
def test_shipped_rl_config_validates(path, monkeypatch, tmp_path):
    from llms_trainer.train.stages import load_config

    monkeypatch.chdir(ROOT)
    raw = yaml.safe_load(path.read_text())
    overrides = [f"{section}.{key}=configs/tokenizers/demo_base" for section, key in
                 (("data", "tokenizer_path"), ("train", "ckpt"))
                 if str(raw.get(section, {}).get(key) or "").startswith("work_dirs/")
                 and not (ROOT / raw[section][key]).exists()]
    model = (raw.get("grpo") or {}).get("reward_model")
    if model and not (ROOT / model).exists():  # written by an earlier step: a stand-in with the statistics
        import shutil

        stand_in = shutil.copytree(ROOT / "configs/tokenizers/demo_base", tmp_path / "rm")  # and a tokenizer
        (stand_in / "config.json").write_text(json.dumps({"model_type": "llama", "reward_mean": 0.0,
                                                          "reward_std": 1.0}))
        overrides.append(f"grpo.reward_model={stand_in}")
    cfg = load_config(str(path.relative_to(ROOT)), overrides)
    assert cfg.stage in ("dpo", "grpo") and cfg.train.num_training_steps


def test_train_rl_sh_checks_before_launching(tmp_path, chat_tokenizer_dir):
    config = rl_config(tmp_path, chat_tokenizer_dir, "x", "dpo", {"datasets": "/nowhere.jsonl"})
    from tests.train.test_distributed import launch_env

    proc = subprocess.run(["sh", str(ROOT / "train_rl.sh"), str(ROOT / "configs/accelerate_configs/cpu.yaml"),
                           str(config)], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=launch_env())
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "key dpo.datasets: '/nowhere.jsonl' matches nothing" in proc.stderr


def test_help_of_the_rl_scripts_is_complete(tmp_path):
    from tests.test_help import (
        test_python_script_help_shows_every_default,
        test_shell_script_help_is_the_whole_header,
    )

    test_python_script_help_shows_every_default("train_rl.py", tmp_path)
    for script in ("train_rl.sh", "train_multi_node_rl.sh"):
        test_shell_script_help_is_the_whole_header(script)
