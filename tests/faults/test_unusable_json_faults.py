"""Valid JSON that no reader can use, through the real entry points: a lone surrogate escape (`"\\ud800"`, not
Unicode text: the tokenizer raised a TypeError, the shard writer a codec error) and 100,000 nested brackets (a
RecursionError in the JSON parser).

Each is a bad record like any other, in every reader: `compress_data.py` names FILE:LINE and honours
`--on-bad-line skip`; SFT and pretraining shards, reward/DPO pairs and GRPO prompts stop with one `error:` line
naming the file and line under `data.on_bad_record: error` (exit 2, earlier checkpoints unchanged) and are
skipped and counted under `skip`, which resumes exactly; eval files name the file and line.
"""
# ruff: noqa: F811 - fixtures imported from other test modules are used as arguments

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llms_trainer.commands.compress import main as compress
from llms_trainer.data.shards import dump_record, read_manifest, write_source
from llms_trainer.train import checkpoint as ckpt
from llms_trainer.train.run import run
from tests.faults.support import file_hashes, logged, one_error_line, steps
from tests.faults.test_stage_data_faults import (  # noqa: F401 (fixtures)
    STAGES,
    chat_model_config,
    chat_tokenizer_dir,
    chats,
    sft_config,
    stage_command,
    work_files,
)
from tests.helpers import text_records, write_jsonl
from tests.train.conftest import RecordingLogger
from tests.train.reward_support import preference_records, reward_config
from tests.train.rl_support import write_prompts
from train_llms import main as train_llms
from train_reward_model import main as train_reward_model

ROOT = Path(__file__).resolve().parents[2]
DEEP = "[" * 100_000 + "]" * 100_000
DEEP_PROBLEM = "nested deeper than 100 levels of arrays/objects"
SURROGATE_PROBLEM = "a lone surrogate escape \\ud800 (not Unicode text: it cannot be encoded as UTF-8 or tokenized)"


def surrogate(record: dict, field: str) -> str:
    """`record` as a JSON line whose `field` holds the escape \\ud800 (valid JSON, not Unicode)."""
    line = json.dumps({**record, field: "SURROGATE"})
    return line.replace("SURROGATE", "half \\ud800 of a pair")


def deep(record: dict, field: str) -> str:
    """`record` as a JSON line whose `field` is 100,000 nested lists."""
    return json.dumps({**record, field: "DEEP"}).replace('"DEEP"', DEEP)


# ---------------------------------------------------------------- compress_data.py


@pytest.mark.parametrize("mode, good, field", [
    ("pretrain", text_records(8), "text"),
    ("sft", chats(8), "messages"),
    ("reward", preference_records(8, 1), "prompt"),
])
def test_compress_names_the_line_and_skips_it(tmp_path, capsys, mode, good, field):
    lines = [json.dumps(r) for r in good]
    lines.insert(2, surrogate(good[0], field))
    lines.insert(5, deep(good[0], field))
    raw = write_jsonl(tmp_path / "src.jsonl", lines)
    args = ["--input", str(raw), "--output", str(tmp_path / "out"), "--mode", mode]
    assert compress(args) == 2
    assert one_error_line(capsys.readouterr().err) == (f"error: {raw}:3: {SURROGATE_PROBLEM}. Fix the line or pass "
                                                       "--on-bad-line skip")
    assert not (tmp_path / "out" / "src").exists()
    assert compress([*args, "--on-bad-line", "skip"]) == 0
    manifest = read_manifest(tmp_path / "out" / "src")
    assert (manifest["records"], manifest["bad_lines"]) == (8, 2)
    raw.write_text("".join(line for line in raw.read_text().splitlines(True) if "\\ud800" not in line))
    assert compress(args) == 2  # then the nested line, never a RecursionError
    assert one_error_line(capsys.readouterr().err) == (f"error: {raw}:5: {DEEP_PROBLEM}. Fix the line or pass "
                                                       "--on-bad-line skip")


def test_compress_script_reports_deep_nesting_in_sft_mode(tmp_path):
    raw = write_jsonl(tmp_path / "chats.jsonl", [json.dumps(r) for r in chats(3)] + [DEEP])
    cmd = [sys.executable, str(ROOT / "data" / "compress_data.py"), "--input", str(raw), "--output",
           str(tmp_path / "out"), "--mode", "sft"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert one_error_line(done.stderr) == f"error: {raw}:4: {DEEP_PROBLEM}. Fix the line or pass --on-bad-line skip"
    done = subprocess.run([*cmd, "--on-bad-line", "skip"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and read_manifest(tmp_path / "out" / "chats")["bad_lines"] == 1


# ---------------------------------------------------------------- shards read while training


def test_sft_shard_records_stop_the_run_at_their_line_and_skip_resumes_exactly(
        tmp_path, chat_tokenizer_dir, chat_model_config, capsys):
    lines = [dump_record(r) for r in chats(100)]
    lines[69] = '{"messages": [{"role": "user", "content": "half \\ud800"}, {"role": "assistant", "content": "ok"}]}'
    lines[74] = deep({}, "messages")
    # shards written by another tool; read 64 records at a time, these are met at step 17 (after checkpoint 16)
    write_source(lines, tmp_path / "shards", "chats", shard_records=None, shard_bytes=None)
    shard = tmp_path / "shards" / "chats" / "part-00001.jsonl.zst"
    config = sft_config(tmp_path, chat_tokenizer_dir, shard.parent, "run")
    args = ["--train_config", str(config), "--model_config", str(chat_model_config)]
    assert train_llms(args) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {shard}:70: bad SFT record: {SURROGATE_PROBLEM}. Fix the record (data/compress_data.py --mode sft "
        "checks every line) or set data.on_bad_record: skip")
    work = tmp_path / "run"
    assert steps(work) == [8, 16] and not ckpt.leftover_dirs(work)
    kept = file_hashes(work / "checkpoint-16")

    assert train_llms([*args, "data.on_bad_record=skip"]) == 0  # resumes from checkpoint-16
    assert f"resumed from {work / 'checkpoint-16'} at step 16" in capsys.readouterr().out
    assert file_hashes(work / "checkpoint-16") == kept
    full = run(config, ["data.on_bad_record=skip", f"work_dir={tmp_path / 'full'}"], str(chat_model_config),
               logger=RecordingLogger())
    losses = logged(work, "train/loss")
    assert sorted(losses) == list(range(1, 25))
    for step, loss in losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step
    assert logged(work, "data/chats/bad_records")[24] == 2


def pretrain_config(tmp_path: Path, tokenizer_dir: Path, shards: Path, name: str) -> Path:
    """12 steps of 2 rows of 32 tokens from one source read in file order; a checkpoint every 4 steps."""
    cfg = {"data": {"mode": "pretrain", "data": {"docs": str(shards)}, "seq_length": 32,
                    "shuffle_buffer_records": 1, "tokenizer_path": str(tokenizer_dir)},
           "train": {"train_batch_size": 2, "num_training_steps": 12, "num_warmup_steps": 1, "lr": 5e-3,
                     "min_lr": 5e-4, "ckpt": None, "seed": 7, "mixed_precision": "no"},
           "log_interval": 1, "eval_interval": 1000, "save_interval": 4, "work_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pretraining_shard_records_stop_the_run_at_their_line_and_skip_resumes_exactly(
        tmp_path, tiny_tokenizer_dir, deterministic_model_config_file, capsys):
    records = [{"text": f"doc {i}"} for i in range(200)]  # about 5 tokens each, BOS and EOS included
    lines = [dump_record(r) for r in records]
    lines[69] = deep({}, "text")
    lines[74] = surrogate(records[74], "text")
    # tokenized 64 records at a time: these two are met when step 9 needs the second batch of documents
    write_source(lines, tmp_path / "shards", "docs", shard_records=None, shard_bytes=None)
    shard = tmp_path / "shards" / "docs" / "part-00001.jsonl.zst"
    config = pretrain_config(tmp_path, tiny_tokenizer_dir, shard.parent, "run")
    args = ["--train_config", str(config), "--model_config", str(deterministic_model_config_file)]
    assert train_llms(args) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {shard}:70: bad record: {DEEP_PROBLEM}. Fix the record or set data.on_bad_record: skip")
    work = tmp_path / "run"
    assert steps(work) == [4, 8] and not ckpt.leftover_dirs(work)
    kept = file_hashes(work / "checkpoint-8")

    assert train_llms([*args, "data.on_bad_record=skip"]) == 0
    assert f"resumed from {work / 'checkpoint-8'} at step 8" in capsys.readouterr().out
    assert file_hashes(work / "checkpoint-8") == kept
    logger = RecordingLogger()
    full = run(config, ["data.on_bad_record=skip", f"work_dir={tmp_path / 'full'}"],
               str(deterministic_model_config_file), logger=logger)
    losses = logged(work, "train/loss")
    assert sorted(losses) == list(range(1, 13))
    for step, loss in losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6), step
    assert logged(work, "data/docs/bad_records")[12] == 2
    key = "data/docs/bad_records"
    assert logged(work, key) == {step: row[key] for step, row in logger.rows if key in row}


# ---------------------------------------------------------------- reward, DPO, GRPO files; eval files


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_files_name_the_line_or_skip_and_count_it(stage, tmp_path, request, capsys):
    key = STAGES[stage][0]
    good = ([json.loads(line) for line in write_prompts(tmp_path / "good.jsonl", 18).read_text().splitlines()]
            if stage == "grpo" else preference_records(18, 1))
    lines = [json.dumps(r) for r in good]
    lines.insert(2, surrogate(good[0], "prompt"))
    lines.insert(5, deep(good[0], "prompt"))
    data = write_jsonl(tmp_path / "train.jsonl", lines)
    main, args = stage_command(stage, tmp_path, data, request)
    assert main([*args, "data.on_bad_record=skip"]) == 0
    assert "2 bad lines skipped" in capsys.readouterr().out
    work = tmp_path / "run"
    before = work_files(work)
    for line, why in ((3, SURROGATE_PROBLEM), (5, DEEP_PROBLEM)):  # the nested line moves up once fixed
        assert main([*args, "train.num_training_steps=3"]) == 2
        assert one_error_line(capsys.readouterr().err) == (f"error: key {key}: {data}:{line}: {why}; fix the line "
                                                           "or set data.on_bad_record: skip")
        assert work_files(work) == before
        data.write_text("".join(text for text in data.read_text().splitlines(True) if "\\ud800" not in text))


def test_reward_eval_file_with_a_surrogate_names_its_line(tmp_path, tiny_tokenizer_dir,
                                                         deterministic_model_config_file, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [json.dumps(r) for r in preference_records(16, 1)])
    held_out = [json.dumps(r) for r in preference_records(4, 2)]
    held_out.insert(1, surrogate(preference_records(1, 3)[0], "rejected"))
    eval_file = write_jsonl(tmp_path / "eval.jsonl", held_out)
    config = reward_config(tmp_path, tiny_tokenizer_dir, "run", [str(train)], [str(eval_file)])
    args = ["--train_config", str(config), "--model_config", str(deterministic_model_config_file)]
    assert train_reward_model(args) == 2
    error = one_error_line(capsys.readouterr().err)
    assert error.startswith("error: ") and f"{eval_file}:2: {SURROGATE_PROBLEM}; fix the held-out file" in error
    assert not steps(tmp_path / "run")


def test_eval_file_nested_too_deep_names_its_line(write_config, model_config_file, tmp_path, capsys):
    nll = write_jsonl(tmp_path / "nll.jsonl", [json.dumps(r) for r in text_records(3)] + [deep({}, "text")])
    config = write_config("run", eval={"eval_methods": ["nll"], "nll_dataset": str(nll)},
                          train={"num_training_steps": 2})
    assert train_llms(["--train_config", str(config), "--model_config", str(model_config_file)]) == 2
    error = one_error_line(capsys.readouterr().err)
    assert error.startswith("error: ") and error.endswith(f"key eval: {nll}:4: {DEEP_PROBLEM}; fix or remove the line")
    assert not steps(tmp_path / "run")
