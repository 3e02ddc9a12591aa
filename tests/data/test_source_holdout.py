"""`eval.source_holdout_records`: the last N records of each source (manifest order) never train — in no
unit's epoch, not after a resume — and are exactly the records the per-source eval scores."""

from __future__ import annotations

import itertools
import json

import pytest

from llms_trainer.data.compress import compress_sources, expand_inputs
from llms_trainer.data.shards import ShardError, list_shards
from llms_trainer.data.stream import SourceStream, heldout_records
from tests.helpers import text_records, write_jsonl

N = 50  # more than the last shard's 20 records: the held-out set spans two shards


@pytest.fixture
def shards(tmp_path):
    """Source a: 300 records in shards of 40 (the last holds 20)."""
    write_jsonl(tmp_path / "in/a.jsonl", text_records(300, seed=1))
    compress_sources(expand_inputs([str(tmp_path / "in/*.jsonl")], None), tmp_path / "out", shard_records=40)
    return list_shards(tmp_path / "out" / "a")


ALL = [r["text"] for r in text_records(300, seed=1)]


def test_held_out_records_are_the_last_n_in_manifest_order(shards):
    assert [r["text"] for r in heldout_records(shards, N)] == ALL[-N:]


@pytest.mark.parametrize("units", [1, 3])
def test_no_unit_reads_a_held_out_record_in_any_epoch(shards, units):
    read = [r["text"] for u in range(units)
            for r in SourceStream(shards, seed=5, unit=u, num_units=units, buffer_records=16, max_epochs=2,
                                  holdout_records=N)]
    assert sorted(read) == sorted(ALL[:-N] * 2)  # every training record once per epoch, no held-out one


def test_resumed_stream_never_reaches_the_held_out_records(shards):
    def stream():
        return SourceStream(shards, seed=3, unit=1, num_units=2, buffer_records=16, max_epochs=2, holdout_records=N)

    full = [r["text"] for r in stream()]
    first = stream()
    head = [r["text"] for r in itertools.islice(iter(first), 97)]
    resumed = stream()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    tail = [r["text"] for r in resumed]
    assert head + tail == full and not set(tail) & set(ALL[-N:])
    assert resumed.epochs_done() == 2.0


def test_holding_out_every_record_is_an_error_naming_the_key(shards):
    with pytest.raises(ShardError, match=r"eval.source_holdout_records 300 leaves no training record .*has 300"):
        SourceStream(shards, holdout_records=300)
