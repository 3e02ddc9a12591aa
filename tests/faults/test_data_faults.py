"""Data-path faults: lying manifests, shards damaged between runs, unsafe source names, bad bytes, empty inputs,
directory modes, reports.

Each test feeds the fault a user hits and asserts the documented message and that nothing was lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from llms_trainer.data import stream as stream_module
from llms_trainer.data.compress import compress_sources, expand_inputs
from llms_trainer.data.mixing import TokenizedSource
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.records import pretrain_text
from llms_trainer.data.shards import (
    ShardError,
    iter_records,
    iter_shard_lines,
    list_shards,
    read_manifest,
    stage_source,
    write_source,
)
from llms_trainer.data.stream import SourceStream
from llms_trainer.tokenizer import new_output_dir
from llms_trainer.train import checkpoint as ckpt
from tests.faults.support import file_hashes, one_error_line, steps
from tests.helpers import text_records, write_jsonl
from tests.tokenizer.support import load_script
from train_llms import main as train_llms

ROOT = Path(__file__).resolve().parents[2]
COMPRESS = ROOT / "data" / "compress_data.py"


@contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: spinning?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _compress_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(COMPRESS), *args], capture_output=True, text=True, timeout=120)


def _error_lines(run: subprocess.CompletedProcess) -> list[str]:
    """The non-empty lines of stderr (no progress bars: stderr is not a terminal here)."""
    return [line for line in run.stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------- 1. a manifest whose record count lies


@pytest.fixture
def news_15(tmp_path) -> Path:
    """A source `news` of 15 records in one shard."""
    src = write_jsonl(tmp_path / "news.jsonl", text_records(15))
    compress_sources(expand_inputs([str(src)], None), tmp_path / "out")
    return tmp_path / "out" / "news"


def _edit_records(source_dir: Path, records: int) -> bytes:
    manifest = json.loads((source_dir / "manifest.json").read_text())
    manifest["shards"][0]["records"] = manifest["records"] = records
    (source_dir / "manifest.json").write_text(json.dumps(manifest))
    return (source_dir / "part-00001.jsonl.zst").read_bytes()


@pytest.mark.parametrize("records", [100_000, 1])
def test_edited_record_count_stops_training_naming_the_shard(news_15, tiny_tokenizer, records):
    shard_bytes = _edit_records(news_15, records)
    spec = PretrainSpec(sources={"news": list_shards(news_15)}, weights={"news": 1.0}, seq_length=32, batch_size=2)
    with deadline(20), pytest.raises(ShardError, match=rf"part-00001\.jsonl\.zst: the shard holds 15 records.*"
                                                      rf"manifest says {records}\b.*re-run data/compress_data\.py"):
        next(iter(ResumableLoader(PretrainData(spec, tiny_tokenizer))))
    with pytest.raises(ShardError, match="the shard holds 15 records"):  # every reader, not only training
        list(iter_records(list_shards(news_15)))
    assert (news_15 / "part-00001.jsonl.zst").read_bytes() == shard_bytes  # the data itself is untouched


def test_stream_fails_instead_of_waiting_for_lines_a_shard_does_not_have(news_15, monkeypatch):
    real = stream_module.iter_shard_lines
    monkeypatch.setattr(stream_module, "iter_shard_lines", lambda shard, skip=0: iter(list(real(shard, skip))[:3]))
    with deadline(10), pytest.raises(ShardError, match=r"part-00001\.jsonl\.zst: holds fewer records than the 15"):
        next(iter(SourceStream(list_shards(news_15))))


def test_source_without_usable_text_fails_instead_of_spinning(tmp_path):
    chats = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"hello {i}"}]}
             for i in range(7)]
    write_source((json.dumps(r) for r in chats), tmp_path, "chat")
    source = TokenizedSource(SourceStream(list_shards(tmp_path / "chat")), pretrain_text,
                             lambda texts: [[1] * len(t) for t in texts])
    with deadline(10), pytest.raises(ShardError, match=r"chat: none of its 7 records has text this stage can use"):
        source.next_doc()


# ---------------------------------------------------------------- 2. source names


@pytest.fixture
def five_sources(tmp_path) -> Path:
    """A previous run's output: five sources under tmp/out."""
    for i, name in enumerate(("code", "news_en", "qa_zh", "wiki_en", "wiki_zh")):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", text_records(5, seed=i))
    compress_sources(expand_inputs([str(tmp_path / "in" / "*.jsonl")], None), tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.parametrize("name", ["x/../../escaped", ".", "..", "", "a/b", ".hidden"])
def test_unsafe_name_is_one_error_line_and_changes_nothing(tmp_path, five_sources, name):
    before = _snapshot(tmp_path)
    run = _compress_cli("--input", str(tmp_path / "in" / "news_en.jsonl"), "--output", str(five_sources),
                        "--name", name)
    assert run.returncode == 2
    assert _error_lines(run) == [f"error: --name: source name {name!r} is not a plain name: use letters, digits, "
                                 "_ - . (not starting with a dot), e.g. news_en"]
    assert _snapshot(tmp_path) == before  # all five sources intact, nothing written anywhere


@pytest.mark.parametrize("name", ["../escaped", ".", "..", "a/b"])
def test_library_refuses_unsafe_names_for_every_caller(tmp_path, name):
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="is not a plain name"):  # SourceNameError
        write_source(['{"text": "x"}'], tmp_path / "out", name)
    with pytest.raises(ValueError, match="is not a plain name"):
        stage_source(['{"text": "x"}'], tmp_path / "out", name)
    assert _snapshot(tmp_path) == {"out": None}


def test_file_stem_that_is_no_source_name_asks_for_name(tmp_path):
    hidden = write_jsonl(tmp_path / ".news.jsonl", text_records(3))
    run = _compress_cli("--input", str(hidden), "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and "pass --name" in run.stderr and not (tmp_path / "out").exists()
    assert _compress_cli("--input", str(hidden), "--output", str(tmp_path / "out"), "--name", "news").returncode == 0
    assert read_manifest(tmp_path / "out" / "news")["records"] == 3


# ---------------------------------------------------------------- 3. bad bytes, empty and odd inputs


def _lines_with_bad_byte(path: Path, bad_line: int, total: int = 60) -> list[dict]:
    """Write `total` JSON lines, line `bad_line` holding a byte that is not UTF-8; returns the good records."""
    records = text_records(total, seed=4)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    lines[bad_line - 1] = b'{"text": "caf\xe9 latin-1"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    return records[:bad_line - 1] + records[bad_line:]


@pytest.mark.parametrize("bad_line", [3, 50])
def test_non_utf8_byte_is_reported_on_its_line_and_skippable(tmp_path, bad_line):
    src = tmp_path / "latin.jsonl"
    good = _lines_with_bad_byte(src, bad_line)
    run = _compress_cli("--input", str(src), "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and not (tmp_path / "out" / "latin").exists()
    assert _error_lines(run) == [f"error: {src}:{bad_line}: not UTF-8 text (byte 0xe9 at byte 14 of the line). "
                                 "Fix the line or pass --on-bad-line skip"]
    run = _compress_cli("--input", str(src), "--output", str(tmp_path / "out"), "--on-bad-line", "skip")
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(tmp_path / "out" / "latin")
    assert (manifest["records"], manifest["bad_lines"]) == (59, 1)
    assert list(iter_records(list_shards(tmp_path / "out" / "latin"))) == good  # every good line kept, in order


def test_empty_input_is_refused_and_keeps_the_previous_source(tmp_path, five_sources):
    before = _snapshot(five_sources)
    empty = tmp_path / "news_en.jsonl"
    empty.write_bytes(b"")
    run = _compress_cli("--input", str(empty), "--output", str(five_sources))
    assert run.returncode == 2
    assert _error_lines(run) == [f"error: source 'news_en' would have no records ({empty}: empty or only blank "
                                 "lines); nothing written. Check the input path, or leave this file out"]
    assert _snapshot(five_sources) == before


def test_directory_input_says_it_is_a_directory(tmp_path):
    (tmp_path / "raw").mkdir()
    run = _compress_cli("--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"))
    assert run.returncode == 2
    assert _error_lines(run) == [f"error: {tmp_path / 'raw'}: is a directory, not a jsonl file; give its files, "
                                 f"e.g. --input '{tmp_path / 'raw' / '*.jsonl'}'"]


@pytest.mark.parametrize(("line", "message"), [
    (b'{"text": "cut off\n', "Invalid control character at column 18"),
    (b'{"text": "cut off', "Unterminated string starting at column 10"),  # a last line without newline
])
def test_json_error_message_has_no_doubled_at(tmp_path, line, message):
    src = tmp_path / "cut.jsonl"
    src.write_bytes(b'{"text": "fine"}\n' + line)
    run = _compress_cli("--input", str(src), "--output", str(tmp_path / "out"))
    assert run.returncode == 2
    assert _error_lines(run) == [f"error: {src}:2: not JSON ({message}). Fix the line or pass --on-bad-line skip"]


# ---------------------------------------------------------------- 4. outputs readable by other users


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_follow_the_umask_not_0700(tmp_path, umask_022):
    write_jsonl(tmp_path / "news.jsonl", text_records(5))
    compress_sources(expand_inputs([str(tmp_path / "news.jsonl")], None), tmp_path / "shards")
    assert _mode(tmp_path / "shards" / "news") == 0o755
    assert _mode(tmp_path / "shards" / "news" / "manifest.json") == 0o644
    with new_output_dir(tmp_path / "tokenizer_out") as out:  # tokenizer outputs and extended model dirs
        (out / "tokenizer.json").write_text("{}")
    assert _mode(tmp_path / "tokenizer_out") == 0o755
    from llms_trainer.io import atomic_write  # policy files and token-count caches of the viewer

    assert _mode(atomic_write(tmp_path / "policy.json", "{}")) == 0o644
    os.umask(0o027)  # the umask decides, not a fixed mode
    with new_output_dir(tmp_path / "private_out"):
        pass
    assert _mode(tmp_path / "private_out") == 0o750


# ---------------------------------------------------------------- 6. inspect_mixture: totals and units


def test_inspect_mixture_total_is_the_sum_of_its_rows(tmp_path, capsys, tiny_tokenizer_dir):
    for name, seed in (("a", 1), ("b", 2)):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", text_records(30, seed=seed))
    compress_sources(expand_inputs([str(tmp_path / "in" / "*.jsonl")], None), tmp_path / "data")
    inspect = load_script("inspect_mixture").main
    assert inspect(["--data", str(tmp_path / "data"), "--tokenizer", str(tiny_tokenizer_dir), "--tokens", "3000",
                    "--seq-length", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["source", "target", "share", "tokens", "epochs"]
    assert lines[1].split() == ["%", "tokens", "%", "tokens", "drawn", "(records)"]  # the unit of each column
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert set(rows) == {"a", "b", "total"}
    total = int(rows["total"][3])
    assert total == int(rows["a"][3]) + int(rows["b"][3])
    packing = re.fullmatch(r"(\d+) tokens drawn = (\d+) packed into (\d+) rows of 64 \+ (\d+) carried into the "
                           r"next row", lines[5])
    drawn, packed, row_count, carried = map(int, packing.groups())
    assert drawn == total == packed + carried and packed == 64 * row_count >= 3000


# ---------------------------------------------------------------- 7. shards damaged between two runs


def _truncate(source: Path) -> tuple[Path, str]:
    shard = source / "part-00001.jsonl.zst"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    return shard, rf"{re.escape(str(shard))}: truncated or altered shard \({size // 2} bytes, manifest says {size}\)"


def _unlisted(source: Path) -> tuple[Path, str]:
    extra = source / "part-00002.jsonl.zst"
    extra.write_bytes((source / "part-00001.jsonl.zst").read_bytes())
    return extra, rf"{re.escape(str(extra))}: not listed in {re.escape(str(source / 'manifest.json'))}"


def _unreadable_manifest(source: Path) -> tuple[Path, str]:
    (source / "manifest.json").write_text('{"source": "zh", "shards": [')
    return source / "manifest.json", rf"{re.escape(str(source / 'manifest.json'))}: unreadable manifest \(.*\)"


def _not_json_line(source: Path) -> tuple[Path, str]:
    """The shard rewritten (manifest and all) by another tool, with line 50 that is not JSON."""
    lines = list(iter_shard_lines(list_shards(source)[0]))
    lines[49] = '{"text": "cut off'
    shutil.rmtree(source)
    write_source(lines, source.parent, source.name, shard_records=None)
    shard = source / "part-00001.jsonl.zst"
    return shard, rf"{re.escape(str(shard))}:50: not JSON inside a shard \(.*\)"


SHARD_FAULTS = {"truncated shard": _truncate, "shard not in its manifest": _unlisted,
                "unreadable manifest": _unreadable_manifest, "a line that is not JSON": _not_json_line}


def test_shards_damaged_between_runs_stop_the_resume_naming_them_and_keep_the_checkpoint(
        write_config, model_config_file, corpus_dir, tmp_path, capsys):
    config = write_config("run", sources={"zh": str(corpus_dir / "zh")}, train={"num_training_steps": 2})
    args = ["--train_config", str(config), "--model_config", str(model_config_file)]
    assert train_llms(args) == 0
    work = tmp_path / "run"
    kept = file_hashes(work / "checkpoint-2")
    for fault, damage in SHARD_FAULTS.items():  # each on a fresh copy, as a new process would first open it
        source = tmp_path / fault.replace(" ", "_") / "zh"
        shutil.copytree(corpus_dir / "zh", source)
        path, message = damage(source)
        damaged = path.read_bytes()
        capsys.readouterr()
        assert train_llms([*args, f"data.data.zh={source}", "train.num_training_steps=4"]) == 2, fault
        reported = one_error_line(capsys.readouterr().err)
        assert re.fullmatch(rf"error: {message}; re-run data/compress_data\.py", reported), (fault, reported)
        assert path.read_bytes() == damaged, fault  # the data is reported, never rewritten
        assert steps(work) == [2] and not ckpt.leftover_dirs(work), fault
        assert file_hashes(work / "checkpoint-2") == kept, fault
