"""Compress → shards → records: exact round trip, validation policies, corruption detection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from llms_trainer.data.compress import BadLineError, compress_sources, expand_inputs
from llms_trainer.data.shards import ShardError, iter_records, list_shards, read_manifest
from tests.helpers import text_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _compress(tmp_path: Path, files: list[Path], **options) -> list[dict]:
    return compress_sources(expand_inputs([str(f) for f in files], None), tmp_path / "out", **options)


def test_round_trip_keeps_records_and_writes_literal_utf8(tmp_path):
    records = text_records(120, seed=1) + text_records(40, seed=2, chinese=True)
    records.append({"title": "长城", "content": "长城是中国古代的军事防御工程。😀"})
    src = write_jsonl(tmp_path / "mixed.jsonl", records)
    [manifest] = _compress(tmp_path, [src], shard_records=25)
    assert manifest["records"] == len(records) and len(manifest["shards"]) == 7
    shards = list_shards(tmp_path / "out" / "mixed")
    assert list(iter_records(shards)) == records
    for shard in shards:
        raw = zstandard.ZstdDecompressor().decompress(shard.path.read_bytes())
        assert b"\\u" not in raw
        assert "长城".encode() in raw or shard is not shards[-1]
    assert read_manifest(tmp_path / "out" / "mixed") == json.loads((tmp_path / "out/mixed/manifest.json").read_text())


def test_bad_line_error_names_file_and_line_and_keeps_old_output(tmp_path):
    good = write_jsonl(tmp_path / "news.jsonl", text_records(5))
    _compress(tmp_path, [good])
    before = (tmp_path / "out/news/manifest.json").read_bytes()
    bad = write_jsonl(tmp_path / "news.jsonl", text_records(3) + ["{not json", '{"text": "ok"}', "[1, 2]"])
    with pytest.raises(BadLineError, match=r"news\.jsonl:4: not JSON"):
        _compress(tmp_path, [bad])
    assert (tmp_path / "out/news/manifest.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["news"]  # no temp dirs left


def test_bad_line_skip_counts_lines_in_manifest(tmp_path):
    lines = text_records(3) + ['{"title": "only a title"}', "{not json", "[1, 2]", '{"text": "fine"}']
    src = write_jsonl(tmp_path / "news.jsonl", lines)
    with pytest.raises(BadLineError, match=r"news\.jsonl:4: no text field"):
        _compress(tmp_path, [src])
    [manifest] = _compress(tmp_path, [src], on_bad_line="skip")
    assert manifest["records"] == 4 and manifest["bad_lines"] == 3


def test_failure_in_second_source_leaves_no_output_at_all(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", text_records(5))
    b = write_jsonl(tmp_path / "b.jsonl", ["oops"])
    with pytest.raises(BadLineError, match="b.jsonl:1"):
        _compress(tmp_path, [a, b])
    assert list((tmp_path / "out").iterdir()) == []


def test_sft_mode_checks_chat_fields(tmp_path):
    src = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]},
        {"instruction": "Add", "input": "1+1", "output": "2"},
        {"messages": [{"role": "user", "content": "no reply"}]},
    ])
    with pytest.raises(BadLineError, match=r"chat\.jsonl:3: the last turn is .user."):
        _compress(tmp_path, [src], mode="sft")


def test_flipped_byte_and_truncated_shard_are_detected(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", text_records(60))
    _compress(tmp_path, [src], shard_records=20)
    shards = list_shards(tmp_path / "out" / "s")
    data = bytearray(shards[1].path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shards[1].path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"part-00002\.jsonl\.zst: corrupt shard"):
        list(iter_records(list_shards(tmp_path / "out" / "s")))
    shards[2].path.write_bytes(shards[2].path.read_bytes()[:-7])
    with pytest.raises(ShardError, match=r"part-00003\.jsonl\.zst: truncated"):
        list(iter_records(list_shards(tmp_path / "out" / "s")[2:]))


def test_missing_manifest_says_to_run_compress(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "part-00001.jsonl.zst").write_bytes(b"x")
    with pytest.raises(ShardError, match="compress_data.py"):
        list_shards(tmp_path / "src")


def test_script_compresses_and_reports_errors(tmp_path):
    src = write_jsonl(tmp_path / "wiki.jsonl", text_records(30))
    run = subprocess.run([sys.executable, str(ROOT / "data/compress_data.py"), "--input", str(src),
                          "--output", str(tmp_path / "out"), "--shard-records", "10"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wiki" in run.stdout and read_manifest(tmp_path / "out/wiki")["records"] == 30
    write_jsonl(src, ["{broken"])
    run = subprocess.run([sys.executable, str(ROOT / "data/compress_data.py"), "--input", str(src),
                          "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "wiki.jsonl:1" in run.stderr and "Traceback" not in run.stderr


def test_skipping_lines_across_decompression_blocks(tmp_path):
    from llms_trainer.data.shards import iter_shard_lines

    src = write_jsonl(tmp_path / "big.jsonl", text_records(9000, seed=5))  # > 2 MiB raw: several blocks
    _compress(tmp_path, [src])
    [shard] = list_shards(tmp_path / "out" / "big")
    lines = list(iter_shard_lines(shard))
    assert len(lines) == 9000 and shard.raw_bytes > 2 * (1 << 20)
    for skip in (0, 1, 2999, 4321, 7777, 8999, 9000):
        assert list(iter_shard_lines(shard, skip=skip)) == lines[skip:]


def test_manifest_that_is_not_an_object_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "manifest.json").write_text("[]")
    with pytest.raises(ShardError, match="not a format_version 1 manifest"):
        read_manifest(tmp_path / "src")
