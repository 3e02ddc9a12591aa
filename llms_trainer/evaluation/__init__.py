"""Evaluation during training: single-choice accuracy, greedy generation, held-out NLL.

Every `evaluate_*` function is called on ALL ranks. It gives rank r the items `items[r::world]`, pads each
rank's share to the same length with dummy copies (so every rank runs the same number of forward passes,
which DeepSpeed ZeRO-3 requires), gathers the per-item results from all ranks and returns the same flat
dict of floats everywhere. This module holds the pieces they share: JSONL reading with file:line errors,
the rank split and merge, eval mode, and left-padded batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from llms_trainer.data.records import UnusableJSON, load_json_line

T = TypeVar("T")


class EvalDataError(ValueError):
    """An evaluation file or record is unusable; the message names the file (and line) and the fix."""


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """Records of a JSONL file as (where, record) with where = "file:line"; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: evaluation file not found; check the path in the eval config")
    rows: list[tuple[str, dict]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = load_json_line(line)
            except json.JSONDecodeError as err:
                raise EvalDataError(f"{where}: invalid JSON ({err.msg}); fix or remove the line") from None
            except UnusableJSON as err:
                raise EvalDataError(f"{where}: {err}; fix or remove the line") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            rows.append((where, record))
    if not rows:
        raise EvalDataError(f"{path}: no records; add at least one JSON line or drop the file from eval")
    return rows


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
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() and torch.no_grad() inside; every submodule's train/eval flag restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def encode_with_bos(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` with BOS in front, as the training data path builds them (no second BOS when the
    text already starts with the BOS token, e.g. a prompt rendered by a chat template)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    return ids if bos is None or ids[:1] == [bos] else [bos] + ids


def pad_id(tokenizer: Any) -> int:
    """Id used to fill padding positions (masked out, so any valid id works)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def left_padded(rows: Sequence[Sequence[int]], fill: int, device: Any) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids for rows padded on the left, so position -1 is real."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "position_ids": position_ids_from_mask(mask).to(device)}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions over real tokens (cumsum - 1, clamped at 0): a left-padded row keeps its unpadded ones."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_zero3(accelerator: Any) -> bool:
    """True under DeepSpeed ZeRO stage 3 (parameters sharded: all ranks must run every forward together)."""
    from llms_trainer.io import zero_stage

    return zero_stage(accelerator) == 3
