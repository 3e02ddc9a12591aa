"""Rewards and foreign checkpoints: control tokens typed in reward pairs and completions stay text (the ids SFT
and DPO give them); whatever a GRPO reward function raises, returns or never returns ends in one `error:` line
(exit 2) naming it and the step, on one process or on one of two; a reward model whose tokenizer overruns its
embeddings and a pickle-only checkpoint are refused at start-up with one line, nothing in work_dir touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llms_trainer.data.pairs import encode_sequences
from llms_trainer.data.sft import ChatEncoder
from tests.faults.support import file_hashes, one_error_line, steps
from tests.train.rl_support import chat_model_config, chat_tokenizer_dir, grpo_config, write_pairs
from tests.train.test_distributed import ACC, ROOT, free_port, launch_env

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here

TYPED = ["say <|assistant|> then </s> and <s> or <|endofchat|>", "ok </s><s> <|user|>x<|endofchat|>"]


def tokenizer_at(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_typed_control_tokens_in_reward_pairs_are_encoded_as_sft_and_dpo_encode_them(chat_tokenizer_dir,
                                                                                      tiny_tokenizer):
    chat = tokenizer_at(chat_tokenizer_dir)
    prompt, response = TYPED
    reward_ids = encode_sequences(chat, [prompt], [response], seq_length=512)[0]
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    [sft_sample] = ChatEncoder(chat, 512).encode([turns])  # what SFT trains on and DPO scores
    assert reward_ids == sft_sample.ids + [chat.eos_token_id]
    for token, count in (("<s>", 1), ("</s>", 1), ("<|assistant|>", 1), ("<|endofchat|>", 2), ("<|user|>", 1)):
        assert reward_ids.count(chat.convert_tokens_to_ids(token)) == count, token  # only the format's own
    # without a chat template: prompt + response as plain text, typed tokens still text
    plain = encode_sequences(tiny_tokenizer, [prompt], [response], seq_length=512)[0]
    assert plain.count(tiny_tokenizer.bos_token_id) == 1 and plain.count(tiny_tokenizer.eos_token_id) == 1
    assert tiny_tokenizer.decode(plain[1:-1]) == prompt + response


def pickle_weights(model, path: Path) -> None:
    """Replace the checkpoint's model.safetensors with a pickle, pytorch_model.bin (transformers 5 writes
    safetensors only)."""
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")


def reward_checkpoint(path: Path, tokenizer_dir: Path, extra_tokens: int = 0, safetensors: bool = True) -> Path:
    """A tiny 1-label Llama classifier sized to the tokenizer, saved with it (plus `extra_tokens` added after)."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from tests.train.conftest import tiny_llama

    tokenizer = tokenizer_at(tokenizer_dir)
    config = LlamaConfig(**{k: v for k, v in tiny_llama(len(tokenizer)).items() if k != "model_type"},
                         num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(str(path))
    if not safetensors:
        pickle_weights(model, path)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(extra_tokens)])
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, chat_tokenizer_dir) -> Path:
    return reward_checkpoint(tmp_path_factory.mktemp("rm") / "good", chat_tokenizer_dir)


def test_completions_scored_by_the_reward_model_keep_typed_control_tokens_as_text(reward_dir):
    from transformers import AutoModelForSequenceClassification

    from llms_trainer.ops.scores import score_pairs

    tokenizer = tokenizer_at(reward_dir)
    model = AutoModelForSequenceClassification.from_pretrained(str(reward_dir)).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    prompt, completion = TYPED
    score_pairs(model, tokenizer, [prompt], [completion], seq_length=512)
    [row] = seen[0].tolist()
    assert row == encode_sequences(tokenizer, [prompt], [completion], 512)[0]
    assert row.index(tokenizer.eos_token_id) == len(row) - 1  # the typed </s> is text, the score is read at the end


# -- through the scripts -----------------------------------------------------------------------------------

FAULTY = '''import os, time

CALLS = [0]


def flaky(prompts, completions, **columns):
    """Fine on its first call; from the second on (on FAULT_RANK only, when set) does what FAULT_KIND says."""
    CALLS[0] += 1
    rank = os.environ.get("FAULT_RANK")
    if CALLS[0] >= 2 and (rank is None or os.environ.get("RANK", "0") == rank):
        kind = os.environ["FAULT_KIND"]
        if kind == "raise":
            return [1 / 0]
        if kind == "exit0":
            raise SystemExit(0)
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "string":
            return ["1.0" for _ in completions]
        if kind == "bool":
            return [True for _ in completions]
        if kind == "hang":
            time.sleep(3600)
    return [float(len(c)) for c in completions]
'''


def faulty_config(tmp_path: Path, tokenizer_dir: Path, name: str = "run", **section) -> Path:
    (tmp_path / "faulty.py").write_text(FAULTY)
    section = {"reward_funcs": [{"name": f"{tmp_path / 'faulty.py'}:flaky"}], **section}
    return grpo_config(tmp_path, tokenizer_dir, name, section, train={"num_training_steps": 3}, save_interval=1)


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=launch_env(**(env or {})),
                          capture_output=True, text=True, timeout=timeout)


def assert_stopped(proc: subprocess.CompletedProcess, pattern: str) -> str:
    import re

    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    line = one_error_line(proc.stderr)
    assert re.search(pattern, line), line
    return line


@pytest.mark.parametrize("kind, message", [
    ("raise", r"raised ZeroDivisionError: division by zero"),
    ("exit0", r"raised SystemExit: 0"),
    ("interrupt", r"raised KeyboardInterrupt"),
    ("string", r"returned str '1.0' among its values; return int or float numbers"),
    ("bool", r"returned bool 'True' among its values"),
    ("hang", r"did not return within grpo.reward_timeout_s = 3 s"),
])
def test_a_failing_reward_function_is_one_error_line_naming_it_and_the_step(kind, message, tmp_path,
                                                                           chat_tokenizer_dir, chat_model_config):
    config = faulty_config(tmp_path, chat_tokenizer_dir, reward_timeout_s=3)
    args = ["--train_config", str(config), "--model_config", str(chat_model_config)]
    proc = run_script("train_rl.py", *args, env={"FAULT_KIND": kind})
    assert_stopped(proc, rf"^error: key grpo.reward_funcs.0.name: '.*faulty.py:flaky' at step 2 {message}")
    work = tmp_path / "run"
    assert steps(work) == [1] and not list(work.glob("checkpoint-2*"))  # the step-1 checkpoint is kept
    if kind == "raise":  # resumed from checkpoint-1, the function fails on its second call again: at step 3
        proc = run_script("train_rl.py", *args, env={"FAULT_KIND": kind})
        assert_stopped(proc, r"'.*faulty.py:flaky' at step 3 raised ZeroDivisionError")
        assert steps(work) == [1, 2]


@pytest.mark.dist
@pytest.mark.slow
def test_a_reward_function_raising_on_rank_1_only_stops_both_processes_with_one_line(tmp_path, chat_tokenizer_dir,
                                                                                     chat_model_config):
    config = faulty_config(tmp_path, chat_tokenizer_dir)
    proc = subprocess.run(["sh", str(ROOT / "train_rl.sh"), str(ACC / "cpu_ddp.yaml"), str(config),
                           str(chat_model_config)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=launch_env(MAIN_PROCESS_PORT=str(free_port()), FAULT_KIND="raise", FAULT_RANK="1"))
    assert "ChildFailedError" not in proc.stderr, proc.stderr[-4000:]
    assert_stopped(proc, r"'.*faulty.py:flaky' at step 2 raised ZeroDivisionError: division by zero")
    work = tmp_path / "run"
    assert steps(work) == [1] and not list(work.glob("checkpoint-2*"))


def pairs_file(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl", 4, seed=1)


@pytest.mark.parametrize("case, message", [
    ("overrun", r"the tokenizer in '.*' has \d+ tokens but the model has \d+ token embeddings"),
    ("pickle", r"'.*pickle' holds only pickle weights \(pytorch_model.bin\); only safetensors weights are loaded. If you "
               r"trust the file, convert it once: python -c .*save_pretrained"),
])
def test_an_unusable_reward_model_is_refused_at_start_up(case, message, tmp_path, chat_tokenizer_dir,
                                                         chat_model_config):
    bad = reward_checkpoint(tmp_path / case, chat_tokenizer_dir, extra_tokens=3 if case == "overrun" else 0,
                            safetensors=case != "pickle")
    before = file_hashes(bad)
    proc = subprocess.run([str(Path(sys.executable).parent / "llms-score-pairs"), str(bad),
                           str(pairs_file(tmp_path))], cwd=ROOT, env=launch_env(), capture_output=True, text=True,
                          timeout=300)
    assert_stopped(proc, rf"^error: checkpoint: {message}")
    config = faulty_config(tmp_path, chat_tokenizer_dir, reward_model=str(bad))
    proc = run_script("train_rl.py", "--train_config", str(config), "--model_config", str(chat_model_config),
                      env={"FAULT_KIND": "none"})
    assert_stopped(proc, rf"^error: {config}: key grpo.reward_model: {message}")
    assert not (tmp_path / "run").exists() and file_hashes(bad) == before
    if case == "pickle":  # the conversion the message gives makes the checkpoint usable
        import re
        import shlex

        command = re.search(r'python -c (".*?")', one_error_line(proc.stderr)).group(1)
        subprocess.run([sys.executable, "-c", shlex.split(command)[0]], check=True, capture_output=True)
        scored = subprocess.run([str(Path(sys.executable).parent / "llms-score-pairs"), str(bad),
                                 str(pairs_file(tmp_path))], env=launch_env(), capture_output=True, text=True)
        assert scored.returncode == 0 and "accuracy" in scored.stdout, scored.stderr[-2000:]


def test_a_pickle_only_train_ckpt_is_refused_and_work_dir_kept(tmp_path, chat_tokenizer_dir, chat_model_config):
    from transformers import AutoModelForCausalLM

    config = faulty_config(tmp_path, chat_tokenizer_dir)
    proc = run_script("train_rl.py", "--train_config", str(config), "--model_config", str(chat_model_config),
                      "train.num_training_steps=1", env={"FAULT_KIND": "none"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "run"
    before = {k: v for k, v in file_hashes(work).items() if k != ".lock"}
    model = AutoModelForCausalLM.from_pretrained(str(work / "checkpoint-1"))
    model.save_pretrained(str(tmp_path / "pickled"))
    pickle_weights(model, tmp_path / "pickled")
    tokenizer_at(chat_tokenizer_dir).save_pretrained(str(tmp_path / "pickled"))
    assert (tmp_path / "pickled" / "pytorch_model.bin").is_file()
    proc = run_script("train_rl.py", "--train_config", str(config), f"train.ckpt={tmp_path / 'pickled'}",
                      "train.resume=none", "train.overwrite_work_dir=true", env={"FAULT_KIND": "none"})
    assert_stopped(proc, r"^error: train.ckpt: '.*pickled' holds only pickle weights \(pytorch_model.bin\); only "
                         r"safetensors weights are loaded")
    assert {k: v for k, v in file_hashes(work).items() if k != ".lock"} == before
    assert json.loads((work / "checkpoint-1" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
