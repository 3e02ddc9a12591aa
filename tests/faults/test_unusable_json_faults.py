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
from tests.faults.support import file_hashes, logged, one_error_line, steps, stops_then_skip_resumes_exactly
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
    stops_then_skip_resumes_exactly(
        config, chat_model_config,
        f"error: {shard}:70: bad SFT record: {SURROGATE_PROBLEM}. Fix the record (data/compress_data.py --mode sft "
        "checks every line) or set data.on_bad_record: skip", [8, 16], 24, "chats", capsys)
    assert logged(tmp_path / "run", "data/chats/bad_records")[24] == 2


def test_pretraining_shard_records_stop_the_run_at_their_line_and_skip_resumes_exactly(
        tmp_path, tiny_tokenizer_dir, deterministic_model_config_file, capsys):
    lines = [dump_record({"text": f"doc {i}"}) for i in range(200)]  # about 5 tokens each, BOS and EOS included
    lines[69] = deep({}, "text")
    lines[74] = surrogate({}, "text")
    # tokenized 64 records at a time: these two are met when step 9 needs the second batch of documents
    write_source(lines, tmp_path / "shards", "docs", shard_records=None, shard_bytes=None)
    shard = tmp_path / "shards" / "docs" / "part-00001.jsonl.zst"
    config = sft_config(tmp_path, tiny_tokenizer_dir, shard.parent, "run")  # made a pretraining run:
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(mode="pretrain", data={"docs": str(shard.parent)}, seq_length=32, concat_multiple_sequence=True)
    cfg["train"].update(train_batch_size=2, num_training_steps=12, lr=5e-3, min_lr=5e-4, num_warmup_steps=1)
    cfg["save_interval"] = 4  # 12 steps of 2 rows of 32 tokens, read in file order
    config.write_text(yaml.safe_dump(cfg))
    stops_then_skip_resumes_exactly(
        config, deterministic_model_config_file,
        f"error: {shard}:70: bad record: {DEEP_PROBLEM}. Fix the record or set data.on_bad_record: skip", [4, 8], 12,
        "docs", capsys)
    assert logged(tmp_path / "run", "data/docs/bad_records")[12] == 2


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


@pytest.mark.parametrize("bad, problem", [(DEEP, DEEP_PROBLEM), (surrogate({}, "text"), SURROGATE_PROBLEM)])
def test_train_tokenizer_names_the_line(tmp_path, bad, problem):
    raw = write_jsonl(tmp_path / "raw.jsonl", [json.dumps(r) for r in text_records(20)] + [bad])
    done = subprocess.run([sys.executable, str(ROOT / "utils" / "train_tokenizer.py"), "--data", str(raw),
                           "--vocab-size", "300", "--output", str(tmp_path / "sp")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not list(tmp_path.glob("sp*"))
    assert one_error_line(done.stderr) == f"error: {raw}:21: {problem}; fix or remove the line"


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("acc", ["cpu_ddp.yaml", "ds_stage2_cpu.yaml"])
def test_a_bad_record_only_rank_1_reads_under_two_processes(acc, tmp_path, tiny_tokenizer_dir,
                                                            deterministic_model_config_file):
    """2 processes (DDP, ZeRO-2): only rank 1 meets a 100,000-deep record, mid-run. The launch ends with rank 1's error line
    (exit 2; it used to exit 0 with no message, as only rank 0 handed errors to the launcher) and the checkpoints
    stay; with skip it resumes and logs the losses of an uninterrupted skipping launch."""
    from tests.faults.test_launch_faults import assert_one_error_line, launched

    lines = [dump_record({"text": f"doc {i}"}) for i in range(400)]
    lines[139] = deep({}, "text")  # position 139: dealt to unit 1 of 2 (rank 1), its 70th record
    write_source(lines, tmp_path / "shards", "docs", shard_records=None, shard_bytes=None)
    shard = tmp_path / "shards" / "docs" / "part-00001.jsonl.zst"
    config = sft_config(tmp_path, tiny_tokenizer_dir, shard.parent, "run")
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(mode="pretrain", data={"docs": str(shard.parent)}, seq_length=32, concat_multiple_sequence=True)
    cfg["train"].update(train_batch_size=2, num_training_steps=10, lr=5e-3, min_lr=5e-4, num_warmup_steps=1)
    cfg["save_interval"] = 2
    config.write_text(yaml.safe_dump(cfg))
    proc = launched(config, deterministic_model_config_file, acc=acc)
    assert_one_error_line(proc, 2, rf"^error: {shard}:140: bad record: {DEEP_PROBLEM}\. Fix the record or set "
                                   r"data\.on_bad_record: skip$")
    work = tmp_path / "run"
    kept = steps(work)
    assert kept and not ckpt.leftover_dirs(work)
    before = file_hashes(work / f"checkpoint-{kept[-1]}")
    resumed = launched(config, deterministic_model_config_file, "data.on_bad_record=skip", acc=acc)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"at step {kept[-1]}" in resumed.stdout and file_hashes(work / f"checkpoint-{kept[-1]}") == before
    full = launched(config, deterministic_model_config_file, "data.on_bad_record=skip", f"work_dir={work}-full",
                    acc=acc)
    assert full.returncode == 0, full.stderr[-4000:]
    losses, reference = logged(work, "train/loss"), logged(Path(f"{work}-full"), "train/loss")
    assert sorted(losses) == list(range(1, 11))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=1e-6), step
    key = "data/docs/bad_records"  # rank 0's count, as every data metric: equal to the uninterrupted launch
    assert logged(work, key) == logged(Path(f"{work}-full"), key)
