"""Work split across ranks: rank r takes items[r::world] (padded with dummies so every rank runs the same
number of forwards, which DeepSpeed ZeRO-3 requires), results are gathered and put back in item order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def rank_share(items: Sequence[T], rank: int, world: int) -> list[tuple[int | None, T]]:
    """This rank's items `items[rank::world]` tagged with their index, padded with (None, dummy) items
    so that every rank gets ceil(len(items) / world) entries."""
    if not items:
        raise ValueError("nothing to evaluate: the item list is empty")
    share: list[tuple[int | None, T]] = [(i, items[i]) for i in range(rank, len(items), world)]
    per_rank = -(-len(items) // world)
    share += [(None, items[0])] * (per_rank - len(share))
    return share


def merge_results(tagged: Sequence[tuple[int | None, Any]]) -> list[Any]:
    """Results of all ranks (concatenated, tagged by item index) back in item order, dummies dropped."""
    real = sorted((index, result) for index, result in tagged if index is not None)
    return [result for _, result in real]


def gather_results(accelerator: Any, local: list) -> list:
    """Concatenate `local` lists from every rank, in rank order (identical on all ranks)."""
    if accelerator.num_processes == 1:
        return list(local)
    from accelerate.utils import gather_object

    return gather_object(local)


def batches(items: Sequence[T], batch_size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of `batch_size` items (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]
