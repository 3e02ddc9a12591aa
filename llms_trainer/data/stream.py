"""A resumable, shuffled stream over one source's shards.

Order within an epoch: the shard order is shuffled with (seed, epoch); records are then read in that order
and dealt to *units* (rank × DataLoader worker) by position: the record at epoch position `p` belongs to
unit `p % num_units`, so every record is read exactly once per epoch across all units. With
`holdout_records` N, the last N records of the source in manifest order (`holdout_limits`) are never read:
no epoch and no resume state contains them (they are the per-source held-out set, `heldout_records`). Each unit shuffles
its records in chunks of `buffer_records` (a bounded buffer), each chunk permuted with a seed derived from
(seed, epoch, unit, chunk start).

The state is four integers — epoch, chunk start (shard position, line), records taken from the chunk — so
resuming re-reads at most one chunk and never replays consumed records. A source with fewer records than
units gives every unit the record `unit % records` (it repeats instead of starving a rank). `position` is the
(shard path, line) of the record last handed out, for messages about bad records. A line no reader may use
(nested too deep, a lone surrogate: `shards.parse_shard_line`) is handed out as the string saying why; the
consumer applies `data.on_bad_record` to it (`BadRecordError` or a count).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from .shards import ShardError, ShardInfo, iter_shard_lines, parse_shard_line


class BadRecordError(ShardError):
    """A record that is not usable (message: SHARD:LINE: reason)."""


class SourceStream:
    """Records of one source for one unit, epoch after epoch (forever unless `max_epochs`)."""

    def __init__(
        self,
        shards: list[ShardInfo],
        *,
        seed: int = 0,
        unit: int = 0,
        num_units: int = 1,
        buffer_records: int = 1024,
        max_epochs: int | None = None,
        holdout_records: int = 0,
    ):
        if not shards:
            raise ShardError("a source needs at least one shard")
        if not 0 <= unit < num_units:
            raise ValueError(f"unit {unit} outside 0..{num_units - 1}")
        self.shards = shards
        self.seed, self.unit, self.num_units = seed, unit, num_units
        self.buffer_records = max(1, buffer_records)
        self.max_epochs = max_epochs
        if sum(s.records for s in shards) == 0:
            raise ShardError(f"{shards[0].path.parent}: source has no records")
        self.holdout_records = holdout_records
        self.limits = holdout_limits(shards, holdout_records)  # records of each shard that may train
        self.total_records = sum(self.limits)
        self.epoch = self.shard_pos = self.line = self.taken = 0
        self._reader: tuple[int, int, Iterator[str]] | None = None  # (shard_pos, next line, lines)
        self.position: tuple[Path, int] | None = None  # (shard, 1-based line) of the last record handed out

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "line": self.line, "taken": self.taken,
                "unit": self.unit, "num_units": self.num_units}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_units", self.num_units) != self.num_units:
            raise ValueError(
                f"data state was saved with {state['num_units']} data units (ranks × workers) but this run has "
                f"{self.num_units}; resume with the same number of processes and train_num_workers"
            )
        self.epoch, self.shard_pos, self.line, self.taken = (
            int(state["epoch"]), int(state["shard_pos"]), int(state["line"]), int(state["taken"]))
        self.unit = int(state.get("unit", self.unit))
        self._reader = None

    def epochs_done(self, state: dict | None = None) -> float:
        """Completed epochs plus the fraction of the current one (by chunk start), now or at `state`."""
        state = state or self.state_dict()
        order = self._order(state["epoch"])
        before = sum(self.limits[i] for i in order[: state["shard_pos"]]) + state["line"]
        before += state["taken"] * self.num_units  # records of the chunk handed out, all units alike
        return state["epoch"] + min(before, self.total_records) / self.total_records

    # -- reading ----------------------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)
        return order

    def _mine(self, position: int) -> bool:
        if self.total_records < self.num_units:
            return position == self.unit % self.total_records
        return position % self.num_units == self.unit

    def _lines_from(self, shard: ShardInfo, shard_pos: int, line: int) -> Iterator[str]:
        if self._reader is not None and self._reader[:2] == (shard_pos, line):
            return self._reader[2]
        return iter_shard_lines(shard, skip=line)

    def _read_chunk(self, order: list[int], starts: list[int]) -> tuple[list[tuple[dict | str, Path, int]], int, int]:
        """Up to `buffer_records` of this unit's (record or why it is unusable, shard path, line) from the chunk
        start, and the end."""
        records: list[tuple[dict | str, Path, int]] = []
        shard_pos, line = self.shard_pos, self.line
        while shard_pos < len(order) and len(records) < self.buffer_records:
            shard, limit = self.shards[order[shard_pos]], self.limits[order[shard_pos]]
            lines = self._lines_from(shard, shard_pos, line) if line < limit else iter(())
            for text in lines:
                line += 1
                if line > shard.records:
                    raise _count_mismatch(shard, "more")
                if self._mine(starts[shard_pos] + line - 1):
                    records.append((parse_shard_line(text, shard.path, line), shard.path, line))
                if len(records) == self.buffer_records or line == limit < shard.records:  # full, or held-out lines next
                    break
            else:
                if line < limit:  # the lines ran out early: never wait for records that are not there
                    raise _count_mismatch(shard, "fewer")
            if line >= limit:
                shard_pos, line, self._reader = shard_pos + 1, 0, None
            else:
                self._reader = (shard_pos, line, lines)
        return records, shard_pos, line

    def __iter__(self) -> Iterator[dict | str]:
        self._reader = None
        while self.max_epochs is None or self.epoch < self.max_epochs:
            order = self._order(self.epoch)
            starts = [0]
            for i in order:
                starts.append(starts[-1] + self.limits[i])
            while True:
                records, end_pos, end_line = self._read_chunk(order, starts)
                if not records:
                    break
                permutation = list(range(len(records)))
                chunk_seed = f"chunk:{self.seed}:{self.epoch}:{self.unit}:{self.shard_pos}:{self.line}"
                random.Random(chunk_seed).shuffle(permutation)
                while self.taken < len(records):
                    self.taken += 1
                    record, path, line = records[permutation[self.taken - 1]]
                    self.position = (path, line)
                    yield record
                self.shard_pos, self.line, self.taken = end_pos, end_line, 0
            self.epoch, self.shard_pos, self.line, self.taken = self.epoch + 1, 0, 0, 0


def holdout_limits(shards: list[ShardInfo], holdout_records: int) -> list[int]:
    """Per shard, how many of its first records may train when the source's last `holdout_records` are held out."""
    total = sum(s.records for s in shards)
    if holdout_records >= total:
        raise ShardError(f"{shards[0].path.parent}: eval.source_holdout_records {holdout_records} leaves no "
                         f"training record (the source has {total}); lower it")
    limits, left = [], holdout_records
    for shard in reversed(shards):
        held = min(left, shard.records)
        limits.append(shard.records - held)
        left -= held
    return limits[::-1]


def heldout_records(shards: list[ShardInfo], holdout_records: int) -> list[dict]:
    """The held-out records of a source: its last `holdout_records` in manifest order (never trained on)."""
    records = []
    for shard, limit in zip(shards, holdout_limits(shards, holdout_records), strict=True):
        if limit < shard.records:
            for number, text in enumerate(iter_shard_lines(shard, skip=limit), start=limit + 1):
                records.append(parse_shard_line(text, shard.path, number))
    return records


def _count_mismatch(shard: ShardInfo, more_or_fewer: str) -> ShardError:
    return ShardError(f"{shard.path}: holds {more_or_fewer} records than the {shard.records} its manifest says; "
                      "re-run data/compress_data.py")

