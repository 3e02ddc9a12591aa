"""The pretraining data chain, source → tokens → mixture → rows → batches, with exact resume.

`PretrainData` is an IterableDataset that yields whole micro-batches, each tagged with the chain state
*after* it. Every (rank, DataLoader worker) pair is one data *unit* reading its own records.
`ResumableLoader` wraps the DataLoader, keeps the latest state of each worker and which worker delivers the
next batch, and on resume gives each new worker the state of the worker whose turn it now is, so the
resumed run sees exactly the batches an uninterrupted run would. The SFT data (`sft.SFTData`) is the same
machinery with its own chain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .mixing import Mixture, TokenizedSource, mixture_report
from .packing import Packer, Spans, collate_packed, collate_rows, pad_id, source_ids
from .records import pretrain_text
from .shards import ShardInfo
from .stream import SourceStream


def make_encoder(tokenizer):
    """Batched encoding: [BOS] + ids + [EOS] per text.

    Fast tokenizers are called through their Rust backend (no offsets, no Python-side BatchEncoding);
    others through the usual `tokenizer(texts)` call.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        batch = getattr(backend, "encode_batch_fast", backend.encode_batch)

        def encode(texts: list[str]) -> list[list[int]]:
            return [bos + e.ids + eos for e in batch(texts, add_special_tokens=False)]
    else:

        def encode(texts: list[str]) -> list[list[int]]:
            return [bos + row + eos for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return encode


@dataclass
class PretrainSpec:
    """Everything that defines a pretraining data chain (built from the `data:` config section)."""

    sources: dict[str, list[ShardInfo]]
    weights: dict[str, float]
    seq_length: int
    batch_size: int
    mode: str = "concat"  # packing.SEQUENCE_MODES
    pad_to_max: bool = False
    seed: int = 0
    max_epochs: int | None = None  # None: sources repeat forever (step-limited training)
    buffer_records: int = 1024
    tokenize_batch_docs: int = 64
    document_attention: bool = False  # concat rows: positions restart per document, no attention across
    holdout_records: int = 0  # the last N records of every source never train (stream.holdout_limits)
    on_bad_record: str = "error"  # a record no reader may use: error (stop at SHARD:LINE) | skip (count it)


class Chain:
    """The chain of one data unit: its sources' streams, the mixture, the packer."""

    def __init__(self, spec: PretrainSpec, tokenizer, unit: int, num_units: int):
        encode = make_encoder(tokenizer)
        self.streams = {
            name: SourceStream(shards, seed=spec.seed, unit=unit, num_units=num_units,
                               buffer_records=spec.buffer_records, max_epochs=spec.max_epochs,
                               holdout_records=spec.holdout_records)
            for name, shards in spec.sources.items()
        }
        sources = {n: TokenizedSource(s, pretrain_text, encode, spec.tokenize_batch_docs, spec.on_bad_record)
                   for n, s in self.streams.items()}
        self.mixture = Mixture(sources, spec.weights)
        self.packer = Packer(_Tagged(self.mixture), spec.seq_length, spec.mode, seed=spec.seed * 100003 + unit,
                             tagged=True)
        self.unit = unit

    def state_dict(self) -> dict:
        return {"unit": self.unit, "mixture": self.mixture.state_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.mixture.load_state_dict(state["mixture"])
        self.packer.load_state_dict(state["packer"])

    def report(self, state: dict | None = None) -> dict:
        """Per source: tokens, share, epochs and bad records skipped."""
        mixture_state = (state or self.state_dict())["mixture"]
        rows = mixture_report(mixture_state, self.streams)
        for name, row in rows.items():
            row["bad_records"] = mixture_state["sources"][name].get("bad_records", 0)
        return rows


class _Tagged:
    """The mixture's (source, document) pairs, as an iterable the packer iterates when it starts."""

    def __init__(self, mixture: Mixture):
        self.mixture = mixture

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        return self.mixture.tagged()


class PretrainData(IterableDataset):
    """Micro-batches `{"input_ids", "labels", "attention_mask", "state"}` for one rank.

    With `document_attention` (concat mode) a batch is `{"input_ids", "labels", "position_ids",
    "document_ids", "state"}` (`packing.collate_packed`); call the model with `packing.model_inputs(batch)`.
    """

    chain_class = Chain
    count_keys: tuple[str, ...] = ("bad_records",)  # per-source counts summed over workers in `report`

    def __init__(self, spec: PretrainSpec, tokenizer, rank: int = 0, world_size: int = 1):
        self.spec, self.tokenizer, self.rank, self.world_size = spec, tokenizer, rank, world_size
        self.worker_states: list[dict] | None = None  # set by ResumableLoader, one per worker slot
        self.pad_id = pad_id(tokenizer)
        self.source_names = list(spec.sources)  # `source_ids` index this list

    def chain_for(self, worker: int, num_workers: int) -> Chain:
        """The chain of a worker: a fresh unit, or the unit and position its slot's state names."""
        num_units = self.world_size * num_workers
        state = self.worker_states[worker] if self.worker_states else None
        unit = state["unit"] if state else self.rank * num_workers + worker
        chain = self.chain_class(self.spec, self.tokenizer, unit, num_units)
        if state:
            chain.load_state_dict(state)
        return chain

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if info:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        chain = self.chain_for(worker, num_workers)
        rows: list = []
        for row in self.rows(chain):
            rows.append(row)
            if len(rows) == self.spec.batch_size:
                yield {**self.collate(rows), "state": chain.state_dict()}
                rows = []
        if rows:
            yield {**self.collate(rows), "state": chain.state_dict()}

    def rows(self, chain: Chain) -> Iterator[tuple[list[int], list[int], Spans]]:
        """The rows a chain yields: (ids, document starts, source spans)."""
        return chain.packer.rows_with_sources()

    def collate(self, rows: list[tuple[list[int], list[int], Spans]]) -> dict[str, torch.Tensor]:
        """One micro-batch of tensors from `batch_size` rows, with `source_ids` (index in spec.sources order)."""
        if self.spec.document_attention and self.spec.mode == "concat":
            batch = collate_packed([(ids, ids, starts) for ids, starts, _ in rows], self.pad_id, self.spec.seq_length)
        else:
            pad_to = self.spec.seq_length if (self.spec.pad_to_max or self.spec.mode == "concat") else None
            batch = collate_rows([ids for ids, _, _ in rows], self.pad_id, pad_to)
        width = batch["input_ids"].shape[1]
        batch["source_ids"] = source_ids([spans for _, _, spans in rows], [len(ids) for ids, _, _ in rows], width)
        return batch

    def report(self, worker_states: list[dict]) -> dict:
        """Tokens, share, epochs and `count_keys` per source, summed over the given worker states (the first
        bad record a chain reports as `first_bad` too)."""
        totals: dict[str, dict] = {}
        chain = self.chain_class(self.spec, self.tokenizer, 0, 1)
        for state in worker_states:
            for name, row in chain.report(state).items():
                acc = totals.setdefault(name, {"tokens": 0, "epochs": 0.0})
                if "holdout_records" in row:
                    acc["holdout_records"] = row["holdout_records"]
                acc["tokens"] += row["tokens"]
                acc["epochs"] = max(acc["epochs"], row["epochs"])
                for key in self.count_keys:
                    acc[key] = acc.get(key, 0) + row[key]
                if "first_bad" in row:
                    acc.setdefault("first_bad", row["first_bad"])
        grand = max(1, sum(r["tokens"] for r in totals.values()))
        for row in totals.values():
            row["share"] = row["tokens"] / grand
        return totals


def _identity(batch: dict) -> dict:
    return batch


class ResumableLoader:
    """Iterates micro-batches of a `PretrainData`; `state_dict()` resumes exactly after the last one."""

    def __init__(self, dataset: PretrainData, num_workers: int = 0, prefetch_factor: int | None = None):
        self.dataset, self.num_workers = dataset, num_workers
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.worker_states = [dataset.chain_for(w, max(1, num_workers)).state_dict() for w in range(max(1, num_workers))]
        self.batches = 0  # batches delivered since the slots were last aligned

    def state_dict(self) -> dict:
        slots = len(self.worker_states)
        return {"num_workers": self.num_workers, "next_worker": self.batches % slots,
                "worker_states": list(self.worker_states)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_workers"] != self.num_workers:
            raise ValueError(f"data state was saved with train_num_workers={state['num_workers']}, this run has "
                             f"{self.num_workers}; resume with the same value")
        slots, first = len(self.worker_states), state["next_worker"]
        self.worker_states = [state["worker_states"][(i + first) % slots] for i in range(slots)]
        self.batches = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.worker_states = list(self.worker_states)
        self.batches = 0
        # An own generator: creating the iterator must not draw from the global torch RNG (dropout etc.),
        # or a resumed run's random stream would differ from an uninterrupted one.
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                            prefetch_factor=self.prefetch_factor, collate_fn=_identity,
                            persistent_workers=False, generator=torch.Generator())
        slots = len(self.worker_states)
        for batch in loader:
            self.worker_states[self.batches % slots] = batch.pop("state")
            self.batches += 1
            yield batch

    def report(self) -> dict:
        """Per source (tokens, share, epochs, …), summed over this rank's workers."""
        return self.dataset.report(self.worker_states)
