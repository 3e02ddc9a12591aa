"""Stream split and resume, token-share mixing, packing and sequence modes."""

from __future__ import annotations

import itertools
import json

import pytest

from llms_trainer.data.compress import compress_sources, expand_inputs
from llms_trainer.data.mixing import PolicyError, load_policy
from llms_trainer.data.packing import Packer, collate_rows
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.shards import list_shards
from llms_trainer.data.stream import SourceStream
from tests.helpers import text_records, write_jsonl


@pytest.fixture
def shard_dir(tmp_path):
    """Three sources: a (300 records, 8 shards), b (Chinese, 60 records), tiny (2 records)."""
    write_jsonl(tmp_path / "in/a.jsonl", text_records(300, seed=1))
    write_jsonl(tmp_path / "in/b.jsonl", text_records(60, seed=2, chinese=True))
    write_jsonl(tmp_path / "in/tiny.jsonl", text_records(2, seed=3))
    compress_sources(expand_inputs([str(tmp_path / "in/*.jsonl")], None), tmp_path / "out", shard_records=40)
    return tmp_path / "out"


def _ids(records):
    return [r["text"] for r in records]


def test_units_cover_every_record_exactly_once_per_epoch(shard_dir):
    shards = list_shards(shard_dir / "a")
    everything = sorted(_ids(itertools.chain.from_iterable(
        SourceStream(shards, seed=7, unit=u, num_units=6, buffer_records=16, max_epochs=1) for u in range(6))))
    assert everything == sorted(r["text"] for r in text_records(300, seed=1))
    one = list(SourceStream(shards, seed=7, max_epochs=2, buffer_records=16))
    first, second = _ids(one[:300]), _ids(one[300:])
    assert sorted(first) == sorted(second) and first != second  # each epoch complete, reshuffled


def test_stream_resume_mid_chunk_never_replays(shard_dir):
    shards = list_shards(shard_dir / "a")
    full = _ids(SourceStream(shards, seed=3, unit=1, num_units=2, buffer_records=16, max_epochs=2))
    stream = SourceStream(shards, seed=3, unit=1, num_units=2, buffer_records=16, max_epochs=2)
    head = _ids(itertools.islice(iter(stream), 203))
    resumed = SourceStream(shards, seed=3, unit=1, num_units=2, buffer_records=16, max_epochs=2)
    resumed.load_state_dict(json.loads(json.dumps(stream.state_dict())))
    assert head + _ids(resumed) == full


def test_tiny_source_repeats_across_more_units_than_records(shard_dir):
    shards = list_shards(shard_dir / "tiny")
    firsts = [next(iter(SourceStream(shards, unit=u, num_units=4)))["text"] for u in range(4)]
    assert len(set(firsts)) == 2
    stream = SourceStream(shards, unit=3, num_units=4)
    list(itertools.islice(iter(stream), 5))
    assert stream.epochs_done() >= 4


def _spec(shard_dir, weights, **kw):
    names = list(weights)
    return PretrainSpec(sources={n: list_shards(shard_dir / n) for n in names}, weights=weights,
                        **{"seq_length": 64, "batch_size": 4, "buffer_records": 32, **kw})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resume_equals_uninterrupted(shard_dir, tiny_tokenizer, num_workers):
    spec = _spec(shard_dir, {"a": 0.5, "b": 0.3, "tiny": 0.2})
    full = [b["input_ids"] for b in itertools.islice(ResumableLoader(PretrainData(spec, tiny_tokenizer),
                                                                     num_workers), 15)]
    first = ResumableLoader(PretrainData(spec, tiny_tokenizer), num_workers)
    head = [b["input_ids"] for b in itertools.islice(first, 7)]
    state = json.loads(json.dumps(first.state_dict()))
    second = ResumableLoader(PretrainData(spec, tiny_tokenizer), num_workers)
    second.load_state_dict(state)
    tail = [b["input_ids"] for b in itertools.islice(second, 8)]
    assert len(head + tail) == len(full)
    assert all((x == y).all() for x, y in zip(head + tail, full, strict=True))


def test_token_shares_follow_policy(shard_dir, tiny_tokenizer):
    weights = {"a": 0.2, "b": 0.5, "tiny": 0.3}
    loader = ResumableLoader(PretrainData(_spec(shard_dir, weights, seq_length=256, batch_size=8), tiny_tokenizer))
    tokens = 0
    for batch in loader:
        tokens += batch["input_ids"].numel()
        if tokens >= 200_000:
            break
    report = loader.report()
    for name, share in weights.items():
        assert abs(report[name]["share"] - share) < 0.02, report
    assert report["tiny"]["epochs"] > 100 and report["a"]["epochs"] > 1


def test_policy_errors_name_the_problem(tmp_path):
    path = tmp_path / "p.json"
    for raw, message in [({"a": 0}, "'a' must be a number > 0"), ({"a": -1}, "> 0"), ({"a": "x"}, "> 0"),
                         ({"a": 1, "zz": 1}, "'zz' is not a configured source"), ({"a": 1}, "'b' has no ratio")]:
        path.write_text(json.dumps(raw))
        with pytest.raises(PolicyError, match=message):
            load_policy(path, ["a", "b"])
    path.write_text('{"a": NaN, "b": 1}')
    with pytest.raises(PolicyError, match="'a' must be"):
        load_policy(path, ["a", "b"])
    path.write_text('{"a": 3, "b": 1}')
    assert load_policy(path, ["a", "b"]) == {"a": 0.75, "b": 0.25}


DOCS = [list(range(100 * i, 100 * i + n)) for i, n in enumerate([5, 12, 3, 30, 7, 9])]


def test_concat_packing_keeps_every_token_in_order_and_pads_only_last_row():
    rows = list(Packer(DOCS, seq_length=8, mode="concat"))
    assert [t for r in rows for t in r] == [t for d in DOCS for t in d]
    assert all(len(r) == 8 for r in rows[:-1]) and 0 < len(rows[-1]) <= 8
    batch = collate_rows(rows[-2:], pad_id=0, pad_to=8)
    pads = 8 - len(rows[-1])
    assert batch["labels"][1, 8 - pads:].eq(-100).all() and batch["attention_mask"][1].sum() == 8 - pads
    assert batch["labels"][0].ne(-100).all()


def test_concat_packing_resumes_with_carried_tokens():
    packer = Packer(iter(DOCS), seq_length=8)
    rows = iter(packer)
    head = [next(rows) for _ in range(3)]
    state = packer.state_dict()
    assert state["pending"]  # a partial row is carried
    rest_docs = DOCS[state["docs_read"]:]
    resumed = Packer(rest_docs, seq_length=8)
    resumed.load_state_dict(state)
    assert head + list(resumed) == list(Packer(DOCS, seq_length=8))


def test_sequence_modes():
    n = 8
    assert list(Packer(DOCS, n, "truncation")) == [d[:n] for d in DOCS]
    assert list(Packer(DOCS, n, "none")) == [d[:n] for d in DOCS]
    split = list(Packer(DOCS, n, "split"))
    assert [t for r in split for t in r] == [t for d in DOCS for t in d]
    assert [len(r) for r in split] == [5, 8, 4, 3, 8, 8, 8, 6, 7, 8, 1]
    sampled = list(Packer(DOCS, n, "sample", seed=1))
    assert sampled[0] == DOCS[0] and len(sampled[3]) == n
    start = sampled[3][0] - DOCS[3][0]
    assert sampled[3] == DOCS[3][start:start + n]
    assert sampled == list(Packer(DOCS, n, "sample", seed=1))  # deterministic
    dynamic = collate_rows([DOCS[0], DOCS[2]], pad_id=0)
    assert dynamic["input_ids"].shape == (2, 5)
    assert collate_rows([DOCS[0], DOCS[2]], pad_id=0, pad_to=n)["input_ids"].shape == (2, n)
