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
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import numpy as np
import torch

SEQUENCE_MODES = ("concat", "truncation", "sample", "split", "none")
IGNORE_INDEX = -100


class Packer:
    """Rows from a document iterator; `state_dict` holds the tokens not yet emitted and a doc counter."""

    def __init__(self, docs: Iterable[list[int]], seq_length: int, mode: str = "concat", seed: int = 0):
        if mode not in SEQUENCE_MODES:
            raise ValueError(f"sequence mode must be one of {SEQUENCE_MODES}, got {mode!r}")
        if seq_length < 1:
            raise ValueError("seq_length must be ≥ 1")
        self.docs, self.seq_length, self.mode, self.seed = docs, seq_length, mode, seed
        self.pending: list[int] = []  # concat: carried tokens; split: rest of the current document
        self.docs_read = 0

    def state_dict(self) -> dict:
        return {"pending": list(self.pending), "docs_read": self.docs_read}

    def load_state_dict(self, state: dict) -> None:
        self.pending, self.docs_read = list(state["pending"]), int(state["docs_read"])

    def _row_of(self, doc: list[int]) -> list[int]:
        n = self.seq_length
        if self.mode == "sample" and len(doc) > n:
            start = random.Random(f"sample:{self.seed}:{self.docs_read}").randrange(len(doc) - n + 1)
            return doc[start:start + n]
        return doc[:n]

    def __iter__(self) -> Iterator[list[int]]:
        n = self.seq_length
        docs = iter(self.docs)
        while True:
            if self.mode in ("concat", "split") and (len(self.pending) >= n or (self.mode == "split" and self.pending)):
                row, self.pending = self.pending[:n], self.pending[n:]
                yield row
                continue
            doc = next(docs, None)
            if doc is None:
                break
            self.docs_read += 1
            if self.mode == "concat":
                self.pending = self.pending + doc
            elif self.mode == "split":
                self.pending = doc
            else:
                yield self._row_of(doc)
        if self.pending:  # finite run: the last row may be short (padded by the batcher)
            row, self.pending = self.pending, []
            yield row


def collate_rows(rows: list[list[int]], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Stack rows into input_ids / labels / attention_mask, right-padded to `pad_to` or the longest row."""
    width = pad_to or max(len(r) for r in rows)
    if all(len(r) == width for r in rows):  # packed rows: no padding to place (numpy converts lists 2.5× faster)
        input_ids = torch.from_numpy(np.array(rows, dtype=np.int64))
        return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}
    input_ids = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
