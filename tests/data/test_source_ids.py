"""Which source every packed token came from: exact over concat / split / one-row-per-document modes, with
document attention, and after a resume from the packer's state."""

from __future__ import annotations

import json

import pytest
import torch

from llms_trainer.data.packing import Packer, source_ids

# source s writes tokens 100·(s+1) + k: the source of a token is readable from the token itself
DOCS = [(s, [100 * (s + 1) + k for k in range(n)]) for s, n in [(0, 5), (1, 9), (2, 3), (0, 12), (1, 4), (2, 7)]]


def truth(row: list[int]) -> list[int]:
    return [t // 100 - 1 for t in row]


@pytest.mark.parametrize("mode", ["concat", "split", "truncation", "none"])
def test_every_token_is_tagged_with_its_documents_source(mode):
    packer = Packer(DOCS, seq_length=6, mode=mode, tagged=True)
    rows = list(packer.rows_with_sources())
    ids = source_ids([spans for _, _, spans in rows], [len(r) for r, _, _ in rows], width=8)
    for r, (row, _, _) in enumerate(rows):
        assert ids[r, :len(row)].tolist() == truth(row)
        assert (ids[r, len(row):] == -1).all()  # padding belongs to no source


@pytest.mark.parametrize("taken", [1, 2, 4])
def test_resumed_packer_tags_as_an_uninterrupted_one(taken):
    full = [spans for _, _, spans in Packer(DOCS, seq_length=6, tagged=True).rows_with_sources()]
    first = Packer(DOCS, seq_length=6, tagged=True)
    rows = first.rows_with_sources()
    head = [next(rows)[2] for _ in range(taken)]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = Packer(DOCS[state["docs_read"]:], seq_length=6, tagged=True)
    resumed.load_state_dict(state)
    assert head + [spans for _, _, spans in resumed.rows_with_sources()] == full
    assert full[1][0] == (0, 1)  # a row that continues a document starts with that document's source


def test_untagged_documents_are_source_0_and_collated_ids_cover_real_tokens_only():
    rows = list(Packer([d for _, d in DOCS], seq_length=6).rows_with_sources())
    assert all(spans == [(0, 0)] or all(s == 0 for _, s in spans) for _, _, spans in rows)
    ids = source_ids([[(0, 2), (3, 1)]], [5], width=6)
    assert torch.equal(ids, torch.tensor([[2, 2, 2, 1, 1, -1]]))
