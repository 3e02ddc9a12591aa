"""Reading sources for the sampler viewer: shard dirs, raw jsonl dirs, pasted sizes, cached token counts."""

from __future__ import annotations

import json
import shutil

import pytest

from llms_trainer.data.compress import compress_sources, expand_inputs
from llms_trainer.data.records import pretrain_text
from llms_trainer.data.shards import read_manifest
from llms_trainer.sampler_viewer.sources import (
    MB,
    TOKEN_CACHE,
    ViewerError,
    count_tokens,
    load_tokenizer,
    parse_pasted_sizes,
    parse_size,
    scan_data_dir,
)
from tests.helpers import text_records, write_jsonl


def test_shard_dir_sizes_come_from_the_manifests(shard_dir):
    sources, warnings = scan_data_dir(shard_dir)
    assert warnings == []
    assert [s.name for s in sources] == ["news", "wiki"]
    for source in sources:
        manifest = read_manifest(shard_dir / source.name)
        assert (source.kind, source.raw_bytes, source.zst_bytes, source.records) == (
            "shards", manifest["raw_bytes"], manifest["zst_bytes"], manifest["records"])
    assert [s.records for s in sources] == [20, 60]
    assert all(s.zst_bytes < s.raw_bytes for s in sources)


def test_raw_dir_counts_non_blank_lines_and_groups_files_by_stem(raw_dir):
    write_jsonl(raw_dir / "wiki.part2.jsonl", text_records(5, seed=9))
    sources, _ = scan_data_dir(raw_dir)
    by_name = {s.name: s for s in sources}
    assert set(by_name) == {"news", "wiki"}
    assert by_name["news"].records == 20  # the blank line is not a record
    assert by_name["wiki"].records == 65
    assert by_name["wiki"].raw_bytes == sum(f.stat().st_size for f in raw_dir.glob("wiki*.jsonl"))
    assert by_name["wiki"].zst_bytes is None


def test_staging_dirs_are_ignored_and_a_broken_source_is_skipped_with_a_warning(shard_dir):
    shutil.copytree(shard_dir / "news", shard_dir / ".news.tmp-123")
    shutil.copytree(shard_dir / "news", shard_dir / "broken")
    (shard_dir / "broken" / "manifest.json").write_text("{not json", encoding="utf-8")
    sources, warnings = scan_data_dir(shard_dir)
    assert [s.name for s in sources] == ["news", "wiki"]
    assert len(warnings) == 1 and "broken" in warnings[0] and "manifest" in warnings[0]


def test_missing_or_empty_directory_is_a_viewer_error(tmp_path):
    with pytest.raises(ViewerError, match="no such directory"):
        scan_data_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerError, match="no sources found"):
        scan_data_dir(tmp_path / "empty")


@pytest.mark.parametrize(("text", "expected"), [
    ("253K", 253 * 1024), ("1.5M", int(1.5 * MB)), ("2 GB", 2 * 2**30), ("3KiB", 3 * 1024),
    ("10", 10 * MB), ("512B", 512), ("'4k'", 4096),
])
def test_parse_size_reads_ls_style_units(text, expected):
    assert parse_size(text) == expected


def test_pasted_sizes_in_both_old_forms():
    braces = parse_pasted_sizes("{'news': 253K, \"wiki\": 1M,\n code: 2.5}")
    assert [(s.name, s.raw_bytes, s.kind) for s in braces] == [
        ("news", 253 * 1024, "pasted"), ("wiki", MB, "pasted"), ("code", int(2.5 * MB), "pasted")]
    csv_form = parse_pasted_sizes("news,wiki\n253K,1M\n")
    assert [(s.name, s.raw_bytes) for s in csv_form] == [("news", 253 * 1024), ("wiki", MB)]


@pytest.mark.parametrize(("text", "message"), [
    ("", "nothing pasted"),
    ("{'a': __import__('os').getcwd()}", "not a number"),
    ("{'a': 1", "do not end"),
    ("{'a' 1}", "name: size"),
    ("a,b\n1", "two lines"),
    ("a,a\n1,2", "pasted twice"),
    ("a,b\n1,-2", "not a number"),
])
def test_bad_pasted_sizes_are_viewer_errors(text, message):
    with pytest.raises(ViewerError, match=message):
        parse_pasted_sizes(text)


def _expected_tokens(tokenizer, records: list[dict]) -> int:
    texts = [pretrain_text(r) for r in records]
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 2 for t in texts)  # + BOS + EOS


def test_token_count_matches_the_tokenizer_and_is_cached_beside_the_manifest(shard_dir, raw_dir, tiny_tokenizer_dir):
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    key = str(tiny_tokenizer_dir)
    wiki = {s.name: s for s in scan_data_dir(shard_dir, key)[0]}["wiki"]
    assert wiki.tokens is None
    progress: list[float] = []
    tokens = count_tokens(wiki, tokenizer, key, progress.append)
    wiki_records = [json.loads(line) for line in (raw_dir / "wiki.jsonl").read_text().splitlines()]
    assert tokens == _expected_tokens(tokenizer, wiki_records)
    assert progress[-1] == 1.0
    cache = json.loads((shard_dir / "wiki" / TOKEN_CACHE).read_text())
    assert cache[key]["tokens"] == tokens and cache[key]["records"] == 60 and "manifest_sha" in cache[key]

    again = {s.name: s for s in scan_data_dir(shard_dir, key)[0]}
    assert again["wiki"].tokens == tokens
    assert again["news"].tokens is None  # not counted yet
    assert {s.name: s.tokens for s in scan_data_dir(shard_dir, "other/tokenizer")[0]} == {"news": None, "wiki": None}


def test_token_cache_is_stale_once_the_data_changes(shard_dir, raw_dir, tiny_tokenizer_dir, tmp_path):
    tokenizer, key = load_tokenizer(tiny_tokenizer_dir), str(tiny_tokenizer_dir)
    for source in scan_data_dir(shard_dir, key)[0] + scan_data_dir(raw_dir, key)[0]:
        count_tokens(source, tokenizer, key)
    assert all(s.tokens is not None for s in scan_data_dir(raw_dir, key)[0])
    assert (raw_dir / f"wiki.{TOKEN_CACHE}").is_file()

    old_cache = (shard_dir / "wiki" / TOKEN_CACHE).read_text()
    write_jsonl(tmp_path / "new" / "wiki.jsonl", text_records(7, seed=5))
    compress_sources(expand_inputs([str(tmp_path / "new" / "wiki.jsonl")], None), shard_dir)
    (shard_dir / "wiki" / TOKEN_CACHE).write_text(old_cache)  # a cache that outlived its manifest
    assert {s.name: s.tokens is None for s in scan_data_dir(shard_dir, key)[0]} == {"news": False, "wiki": True}

    with open(raw_dir / "news.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "one more record"}) + "\n")
    assert {s.name: s.tokens is None for s in scan_data_dir(raw_dir, key)[0]} == {"news": True, "wiki": False}


def test_raw_source_token_count_equals_its_shard_count(shard_dir, raw_dir, tiny_tokenizer_dir):
    tokenizer, key = load_tokenizer(tiny_tokenizer_dir), str(tiny_tokenizer_dir)
    raw = {s.name: count_tokens(s, tokenizer, key) for s in scan_data_dir(raw_dir, key)[0]}
    shards = {s.name: count_tokens(s, tokenizer, key) for s in scan_data_dir(shard_dir, key)[0]}
    assert raw == shards


def test_a_directory_that_is_not_a_tokenizer_is_a_viewer_error(tmp_path):
    with pytest.raises(ViewerError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "tokenizer.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ViewerError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path / "junk")
