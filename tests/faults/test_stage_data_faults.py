"""Bad records in the data of the SFT, reward, DPO and GRPO stages, through the real entry points.

A line that is not JSON or a record missing what its stage needs stops the run with one `error:` line naming
the file and line (`data.on_bad_record: error`, the default), or is skipped and counted (`skip`). Nothing is
lost: checkpoints written before the error stay as they were, and the skipping run resumes exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from llms_trainer.commands.compress import main as compress
from llms_trainer.data.shards import dump_record, read_manifest, write_source
from tests.faults.support import logged, one_error_line, steps, stops_then_skip_resumes_exactly
from tests.helpers import EN_WORDS, write_jsonl
from tests.train.reward_support import preference_records, reward_config
from tests.train.rl_support import (
    chat_model_config,
    chat_tokenizer_dir,
    grpo_config,
    rl_config,
    write_prompts,
)
from train_reward_model import main as train_reward_model
from train_rl import main as train_rl

__all__ = ["chat_model_config", "chat_tokenizer_dir"]  # fixtures used here

NOT_JSON = '{"prompt": "cut off'
NOT_JSON_PROBLEM = "not JSON (Invalid control character at column 20)"  # the newline ends the string


def with_bad_lines(path: Path, good: list[dict], missing: dict) -> Path:
    """The good records, with a line that is not JSON at line 3 and `missing` (a record lacking what its stage
    needs) at line 6."""
    lines = [json.dumps(r) for r in good]
    lines.insert(2, NOT_JSON)
    lines.insert(5, json.dumps(missing))
    return write_jsonl(path, lines)


def chats(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": " ".join(rng.choices(EN_WORDS, k=5)) + "?"},
                          {"role": "assistant", "content": " ".join(rng.choices(EN_WORDS, k=8)) + "."}]}
            for _ in range(n)]


def work_files(work: Path) -> dict[str, bytes]:
    """Every file under work_dir with its bytes, but the lock (rewritten by each run that takes it)."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()
            and p.name != ".lock"}


# ---------------------------------------------------------------- SFT: shards read while training


def test_compress_sft_names_the_bad_line_or_skips_and_counts_it(tmp_path, capsys):
    raw = with_bad_lines(tmp_path / "chats.jsonl", chats(10), {"title": "no conversation"})
    args = ["--input", str(raw), "--output", str(tmp_path / "out"), "--mode", "sft"]
    assert compress(args) == 2
    assert one_error_line(capsys.readouterr().err) == (f"error: {raw}:3: {NOT_JSON_PROBLEM}. Fix the line or pass "
                                                       "--on-bad-line skip")
    assert not (tmp_path / "out" / "chats").exists()
    assert compress([*args, "--on-bad-line", "skip"]) == 0
    manifest = read_manifest(tmp_path / "out" / "chats")
    assert (manifest["records"], manifest["bad_lines"]) == (10, 2)
    raw.write_text("".join(line for line in raw.read_text().splitlines(True) if line.strip() != NOT_JSON))
    assert compress(args) == 2  # the next bad line is named once this one is fixed
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {raw}:5: unknown chat format (expected ")


def sft_config(tmp_path: Path, tokenizer_dir: Path, shards: Path, name: str) -> Path:
    """24 steps of 4 conversations, one per row, read in file order; a checkpoint every 8 steps."""
    cfg = {"data": {"mode": "sft", "data": {"chats": str(shards)}, "seq_length": 64, "shuffle_buffer_records": 1,
                    "concat_multiple_sequence": False, "tokenizer_path": str(tokenizer_dir)},
           "train": {"train_batch_size": 4, "num_training_steps": 24, "num_warmup_steps": 2, "lr": 1e-2,
                     "min_lr": 1e-3, "ckpt": None, "seed": 3, "mixed_precision": "no"},
           "log_interval": 1, "eval_interval": 1000, "save_interval": 8, "work_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_sft_records_met_mid_run_keep_earlier_checkpoints_and_skip_resumes_exactly(
        tmp_path, chat_tokenizer_dir, chat_model_config, capsys):
    records = chats(100)
    records[69] = {"messages": [{"role": "assistant", "content": "I speak first"}]}  # a wrong role order
    records[74] = {"title": "no conversation here"}  # no messages at all
    # shards written without compress_data.py's check; the encoder reads 64 records at a time, so these two
    # are met at step 17, after checkpoints 8 and 16
    write_source((dump_record(r) for r in records), tmp_path / "shards", "chats", shard_records=None,
                 shard_bytes=None)
    shard = tmp_path / "shards" / "chats" / "part-00001.jsonl.zst"
    config = sft_config(tmp_path, chat_tokenizer_dir, shard.parent, "run")
    stops_then_skip_resumes_exactly(
        config, chat_model_config,
        f"error: {shard}:70: bad SFT record: turn 1: 'assistant' where 'user' belongs (order: [system], user, "
        "assistant, user, ...). Fix the record (data/compress_data.py --mode sft checks every line) or set "
        "data.on_bad_record: skip", [8, 16], 24, "chats", capsys)
    assert logged(tmp_path / "run", "data/chats/bad_records")[24] == 2


# ---------------------------------------------------------------- reward, DPO, GRPO: files read at start-up

PAIR_WITHOUT_SELECTED = {"prompt": "a question?", "rejected": " an answer."}
STAGES = {  # stage → (config key of its data, a record lacking what it needs, the problem reported)
    "reward": ("data.reward_model_datasets", PAIR_WITHOUT_SELECTED,
               "no preference pair (expected prompt, selected, rejected)"),
    "dpo": ("dpo.datasets", PAIR_WITHOUT_SELECTED, "no preference pair (expected prompt, selected, rejected)"),
    "grpo": ("grpo.prompts", {"text": "a question?"},
             "no prompt (expected a 'prompt' string or a 'messages' list ending with a user turn)"),
}


def stage_command(stage: str, tmp_path: Path, data: Path, request) -> tuple:
    """(the stage's script main, its arguments) for a 2-step run on `data`."""
    if stage == "reward":
        config = reward_config(tmp_path, request.getfixturevalue("tiny_tokenizer_dir"), "run", [str(data)],
                               train={"num_training_steps": 2, "num_training_epochs": None, "num_warmup_steps": 0})
        return train_reward_model, ["--train_config", str(config), "--model_config",
                                    str(request.getfixturevalue("deterministic_model_config_file"))]
    tokenizer_dir = request.getfixturevalue("chat_tokenizer_dir")
    if stage == "dpo":
        config = rl_config(tmp_path, tokenizer_dir, "run", "dpo", {"datasets": str(data)},
                           train={"num_training_steps": 2})
    else:
        config = grpo_config(tmp_path, tokenizer_dir, "run", {"prompts": str(data)}, train={"num_training_steps": 2})
    return train_rl, ["--train_config", str(config), "--model_config",
                      str(request.getfixturevalue("chat_model_config"))]


@pytest.mark.parametrize("stage", list(STAGES))
def test_bad_lines_in_stage_data_are_named_by_file_and_line_or_skipped_and_counted(stage, tmp_path, request, capsys):
    key, missing, problem = STAGES[stage]
    good = ([json.loads(line) for line in write_prompts(tmp_path / "good.jsonl", 18).read_text().splitlines()]
            if stage == "grpo" else preference_records(18, 1))
    data = with_bad_lines(tmp_path / "train.jsonl", good, missing)
    main, args = stage_command(stage, tmp_path, data, request)
    assert main([*args, "data.on_bad_record=skip"]) == 0
    assert "2 bad lines skipped" in capsys.readouterr().out  # the start-up line of the stage's data
    work = tmp_path / "run"
    assert steps(work) == [2]
    before = work_files(work)

    # without skip, even a resume of that run (train.resume: auto) stops at start-up and changes nothing
    for line, why in ((3, NOT_JSON_PROBLEM), (5, problem)):
        assert main([*args, "train.num_training_steps=3"]) == 2
        assert one_error_line(capsys.readouterr().err) == (f"error: key {key}: {data}:{line}: {why}; fix the line "
                                                           "or set data.on_bad_record: skip")
        assert work_files(work) == before
        data.write_text("".join(text for text in data.read_text().splitlines(True) if text.strip() != NOT_JSON))
