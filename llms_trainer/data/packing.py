"""Token documents → rows of at most `seq_length` tokens, and rows → padded batches.

Modes (config: `concat_multiple_sequence`, `sequence_sample_mode`):

- `concat`: documents joined (each already ends in EOS) and cut into rows of exactly `seq_length`; the
  remainder carries into the next row, so only the very last row of a finite run can be short.
- `truncation`: one row per document, its first `seq_length` tokens.
- `sample`: one row per document; a longer document gives a random window of `seq_length` tokens.
- `split`: every full `seq_length` chunk of a document is a row; the tail is a row of its own.
- `none`: one row per document, truncated to `seq_length`; batches padded to their longest row
  (or to `seq_length` with `pad_to_max`).

Padding positions get label -100 and attention 0.

Document attention (`collate_packed`): a packed row also carries `position_ids` restarting at 0 at every
document start and `document_ids` (the document's index in its row, -1 on padding), and no `attention_mask`;
`model_inputs` then lets transformers keep attention inside each document (see its docstring). The label at
each document start is -100, so no position is trained to predict across a boundary.
`best_fit_decreasing` packs whole documents (SFT conversations) into rows.

Sources: a `Packer` fed `(source index, document)` pairs (`tagged=True`, the mixture's `tagged()`) also
says which source each token of a row came from, as `(offset, source)` spans (`rows_with_sources`); the
batchers turn them into `source_ids` ([B, T], -1 on padding) so the loss can be split by source.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator

import numpy as np
import torch

SEQUENCE_MODES = ("concat", "truncation", "sample", "split", "none")
IGNORE_INDEX = -100


Spans = list[tuple[int, int]]  # (offset in the row, source index) where a source's tokens begin


class Packer:
    """Rows from a document iterator; `state_dict` holds the tokens not yet emitted, where documents start in
    them (and each one's source), and a doc counter.

    `docs` yields token lists, or `(source index, token list)` pairs when `tagged`.
    """

    def __init__(self, docs: Iterable, seq_length: int, mode: str = "concat", seed: int = 0,
                 tagged: bool = False):
        if mode not in SEQUENCE_MODES:
            raise ValueError(f"sequence mode must be one of {SEQUENCE_MODES}, got {mode!r}")
        if seq_length < 1:
            raise ValueError("seq_length must be ≥ 1")
        self.docs, self.seq_length, self.mode, self.seed, self.tagged = docs, seq_length, mode, seed, tagged
        self.pending: list[int] = []  # concat: carried tokens; split: rest of the current document
        self.starts: list[int] = []  # offsets in `pending` where a document starts
        self.sources: list[int] = []  # the source of each document in `starts`
        self.carry_source = 0  # the source of the document `pending` begins inside (when 0 is not a start)
        self.docs_read = 0

    def state_dict(self) -> dict:
        return {"pending": list(self.pending), "starts": list(self.starts), "docs_read": self.docs_read,
                "sources": list(self.sources), "carry_source": self.carry_source}

    def load_state_dict(self, state: dict) -> None:
        self.pending, self.docs_read = list(state["pending"]), int(state["docs_read"])
        self.starts = list(state.get("starts", [0] if self.pending else []))
        self.sources = list(state.get("sources", [0] * len(self.starts)))
        self.carry_source = int(state.get("carry_source", 0))

    def _row_of(self, doc: list[int]) -> list[int]:
        n = self.seq_length
        if self.mode == "sample" and len(doc) > n:
            start = random.Random(f"sample:{self.seed}:{self.docs_read}").randrange(len(doc) - n + 1)
            return doc[start:start + n]
        return doc[:n]

    def _take(self, n: int) -> tuple[list[int], list[int], Spans]:
        row, self.pending = self.pending[:n], self.pending[n:]
        mine = [(s, src) for s, src in zip(self.starts, self.sources, strict=True) if s < n]
        spans = mine if mine and mine[0][0] == 0 else [(0, self.carry_source), *mine]
        rest = [(s - n, src) for s, src in zip(self.starts, self.sources, strict=True) if s >= n]
        self.starts, self.sources = [s for s, _ in rest], [src for _, src in rest]
        self.carry_source = spans[-1][1]
        return row, [s for s, _ in mine], spans

    def rows_with_sources(self) -> Iterator[tuple[list[int], list[int], Spans]]:
        """Rows, the offsets where a document starts in each (a row continuing a document has none at 0), and
        the row's source spans."""
        n = self.seq_length
        docs = iter(self.docs)
        while True:
            if self.mode in ("concat", "split") and (len(self.pending) >= n or (self.mode == "split" and self.pending)):
                yield self._take(n)
                continue
            item = next(docs, None)
            if item is None:
                break
            source, doc = item if self.tagged else (0, item)
            self.docs_read += 1
            if self.mode == "concat":
                self.starts.append(len(self.pending))
                self.sources.append(source)
                self.pending = self.pending + doc
            elif self.mode == "split":
                self.pending, self.starts, self.sources = doc, [0], [source]
            else:
                yield self._row_of(doc), [0], [(0, source)]
        if self.pending:  # finite run: the last row may be short (padded by the batcher)
            yield self._take(len(self.pending))

    def rows_with_starts(self) -> Iterator[tuple[list[int], list[int]]]:
        """Rows and the offsets where a document starts in each (a row continuing a document has none at 0)."""
        for row, starts, _ in self.rows_with_sources():
            yield row, starts

    def __iter__(self) -> Iterator[list[int]]:
        for row, _, _ in self.rows_with_sources():
            yield row


def source_ids(spans_per_row: list[Spans], lengths: list[int], width: int) -> torch.Tensor:
    """[rows, width] int64: the source index of every token (from its row's spans), -1 on padding."""
    out = np.full((len(spans_per_row), width), -1, np.int64)
    for r, (spans, length) in enumerate(zip(spans_per_row, lengths, strict=True)):
        for (offset, source), (end, _) in zip(spans, [*spans[1:], (length, -1)], strict=True):
            out[r, offset:min(end, length)] = source
    return torch.from_numpy(out)


def pad_id(tokenizer) -> int:
    """Id used to fill padding positions (masked out, so any valid id works): pad, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_rows(rows, fill: int, left: bool = False) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of token rows padded to the longest (right padding unless `left`)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.as_tensor(np.asarray(row, dtype=np.int64))
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def collate_rows(rows: list[list[int]], pad_id: int, pad_to: int | None = None,
                 labels: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """Stack rows into input_ids / labels / attention_mask, right-padded to `pad_to` or the longest row.

    Labels are the ids themselves unless given (one list per row, as long as the row).
    """
    width = pad_to or max(len(r) for r in rows)
    if labels is None and all(len(r) == width for r in rows):  # packed rows: nothing to pad (numpy: 2.5× faster)
        input_ids = torch.from_numpy(np.array(rows, dtype=np.int64))
        return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    if labels is None:
        return {"input_ids": input_ids, "labels": input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX),
                "attention_mask": attention_mask}
    padded = torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in labels], dtype=torch.long)
    return {"input_ids": input_ids, "labels": padded, "attention_mask": attention_mask}


def collate_packed(rows: list[tuple[list[int], list[int], list[int]]], pad_id: int,
                   width: int) -> dict[str, torch.Tensor]:
    """Rows of (ids, labels, document starts) → input_ids / labels / position_ids / document_ids, right-padded.

    Positions restart at 0 at every start (and at 0 for the padding); the label at a start is -100.
    """
    shape = (len(rows), width)
    input_ids, labels = np.full(shape, pad_id, np.int64), np.full(shape, IGNORE_INDEX, np.int64)
    position_ids, document_ids = np.tile(np.arange(width, dtype=np.int64), (len(rows), 1)), np.full(shape, -1)
    for r, (ids, row_labels, starts) in enumerate(rows):
        n = len(ids)
        bounds = np.array(sorted({0, *starts}), dtype=np.int64)
        document = np.zeros(n, np.int64)
        document[bounds[1:]] = 1
        document = np.cumsum(document)
        input_ids[r, :n], labels[r, :n] = ids, row_labels
        labels[r, list(starts)] = IGNORE_INDEX
        position_ids[r, :n] = np.arange(n) - bounds[document]
        position_ids[r, n:] -= n
        document_ids[r, :n] = document
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(position_ids), "document_ids": torch.from_numpy(document_ids)}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    """Keyword arguments of the model forward for a batch of `collate_rows` or `collate_packed`.

    Packed rows pass `position_ids` and no attention mask: transformers 5 (sdpa, eager, flash-attention)
    then finds the documents from the restarting positions and attends only inside each. That detection is
    skipped when a KV cache exists, so `use_cache=False` is part of the contract; a 2D mask would turn it off
    too (and let documents see each other). Padded rows pass their attention mask.
    """
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding input tokens of a batch (either layout)."""
    if "document_ids" in batch:
        return int((batch["document_ids"] >= 0).sum())
    return int(batch["attention_mask"].sum())


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity`: longest first, each into the fullest bin
    it fits (ties: lower index first), so the result is deterministic."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a document of {max(lengths)} tokens does not fit a row of {capacity}")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = bisect_left(free, (lengths[index], -1))
        if k == len(free):
            bins.append([index])
            space, target = capacity - lengths[index], len(bins) - 1
        else:
            space, target = free.pop(k)
            bins[target].append(index)
            space -= lengths[index]
        if space > 0:
            insort(free, (space, target))
    return bins
