"""Preference pairs for the reward model: read, encode, deal to processes, batch — with exact resume.

Records are JSON lines `{"prompt", "selected", "rejected"}` (`chosen` is accepted for `selected`; an optional
numeric `margin` asks the pair's score gap to exceed it). They come from `.jsonl` files (paths or globs) or
from shards written by `data/compress_data.py --mode reward` (a source directory or a glob of its
`.jsonl.zst` files). A bad line (not UTF-8/JSON, a field missing or empty, a non-numeric margin) stops the
run naming `file:line`, or is skipped and counted per file.

Sequence = prompt and response joined by the tokenizer's chat template when it has one (the prompt as a user
turn, the response as the assistant turn, encoded as SFT and DPO encode conversations), else by plain
concatenation `prompt + response`; one BOS in front, EOS appended. Prompt and response are user text: control
tokens typed in them (`<|assistant|>`, `<|endofchat|>`, `<s>`, `</s>`) stay text. A sequence longer than `seq_length` keeps its first `seq_length - 1` tokens (the start of the
prompt and as much response as fits) and then EOS. A pair whose two sequences come out identical (the
responses were cut away, or were equal) is dropped and counted.

All files are concatenated and shuffled anew each epoch with (seed, epoch). The pairs then form one stream,
epoch after epoch; micro-batch g of every process covers stream positions [g·P·B, (g+1)·P·B) for P processes
and B pairs per micro-batch, and process r takes positions g·P·B + r + P·j (j < B). Every process therefore
has the same number of micro-batches, a step holds the same pairs for any P at the same global batch, and
the state for an exact resume is one number: micro-batches handed out.
"""

from __future__ import annotations

import glob
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .chat_format import CHAT_TOKENS, UserText
from .compress import parse_input_line
from .packing import pad_rows
from .records import preference_pair
from .sft import ChatEncoder, ChatTokenizerError
from .shards import ShardError, ShardInfo, iter_shard_lines, list_shards

ENCODE_CHUNK = 512  # texts per tokenizer call


class PairDataError(ValueError):
    """Unusable preference-pair input; the message names the file (and line) and the fix."""


class BadRecordError(PairDataError):
    """A line that is not a usable pair (message: FILE:LINE: problem)."""


@dataclass(frozen=True)
class Pair:
    prompt: str
    selected: str
    rejected: str
    margin: float | None
    where: str  # file:line


@dataclass
class ReadReport:
    """Per input file: pairs read and bad lines skipped."""

    pairs: dict[str, int] = field(default_factory=dict)
    bad: dict[str, int] = field(default_factory=dict)


def _units(entry: str) -> list[tuple[str, Path | ShardInfo]]:
    """(display name, file) per file an entry names: a jsonl path or glob, or shards (a dir or *.zst)."""
    if os.path.isdir(entry) or entry.endswith(".zst"):
        try:
            return [(str(s.path), s) for s in list_shards(entry)]
        except ShardError as err:
            raise PairDataError(str(err)) from None
    matched = sorted(glob.glob(entry)) if glob.has_magic(entry) else [entry]
    if not matched:
        raise PairDataError(f"{entry}: no files match; check the path")
    for path in matched:
        if not os.path.isfile(path):
            raise PairDataError(f"{path}: not a file; give jsonl files, a glob, or a shard directory")
    return [(path, Path(path)) for path in matched]


def _lines(source: Path | ShardInfo) -> Iterator[bytes]:
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            yield from fh
    else:
        try:
            for line in iter_shard_lines(source):
                yield line.encode("utf-8")
        except ShardError as err:
            raise PairDataError(str(err)) from None


def _margin_problem(record: dict) -> str | None:
    margin = record.get("margin")
    if margin is None:
        return None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        return f"margin must be a finite number, got {margin!r}"
    return None


def read_pairs(entries: list[str], on_bad_record: str = "error") -> tuple[list[Pair], ReadReport]:
    """Every pair of the files the entries name, in order; bad lines raise PairDataError or are counted."""
    if not entries:
        raise PairDataError("no preference-pair files given")
    pairs, report = [], ReadReport()
    for entry in entries:
        for name, source in _units(entry):
            report.pairs.setdefault(name, 0)
            report.bad.setdefault(name, 0)
            for number, raw in enumerate(_lines(source), 1):
                record, problem = parse_input_line(raw, "reward", first_line=number == 1)
                problem = problem or (_margin_problem(record) if record is not None else None)
                if record is None and problem is None:
                    continue  # blank line
                if problem is not None:
                    if on_bad_record != "skip":
                        raise BadRecordError(f"{name}:{number}: {problem}")
                    report.bad[name] += 1
                    continue
                prompt, selected, rejected = preference_pair(record)
                margin = record.get("margin")
                pairs.append(Pair(prompt, selected, rejected, None if margin is None else float(margin),
                                  f"{name}:{number}"))
                report.pairs[name] += 1
    if not pairs:
        raise PairDataError(f"{', '.join(report.pairs)}: no usable pairs ({sum(report.bad.values())} bad lines)")
    return pairs, report


# -- encoding -------------------------------------------------------------------------------------------

_PROMPT_SLOT, _RESPONSE_SLOT = "\x00prompt\x00", "\x00response\x00"


def _template_rows(tokenizer, prompts: list[str], responses: list[str]) -> list[list[int]]:
    """Pairs through the tokenizer's own chat template (an instruct model's, not the built-in format).

    The template is rendered once around two placeholders; its own text is encoded with its special tokens,
    the prompt and response as user text between them, so typed control strings stay text here too. A BOS
    is put in front when the template does not write one.
    """
    turns = [{"role": "user", "content": _PROMPT_SLOT}, {"role": "assistant", "content": _RESPONSE_SLOT}]
    rendered = tokenizer.apply_chat_template(turns, tokenize=False)
    if rendered.count(_PROMPT_SLOT) != 1 or rendered.count(_RESPONSE_SLOT) != 1:
        raise PairDataError("the tokenizer's chat template changes message text (it does not render a user "
                            "and an assistant message verbatim), so pairs cannot be encoded through it")
    before, rest = rendered.split(_PROMPT_SLOT)
    middle, after = rest.split(_RESPONSE_SLOT)
    before_ids, middle_ids, after_ids = (tokenizer(part, add_special_tokens=False)["input_ids"]
                                         for part in (before, middle, after))
    bos = tokenizer.bos_token_id
    if bos is not None and before_ids[:1] != [bos]:
        before_ids = [bos] + before_ids
    text = UserText(tokenizer.backend_tokenizer)
    rows = []
    for start in range(0, len(prompts), ENCODE_CHUNK):
        prompt_ids = text.encode(prompts[start:start + ENCODE_CHUNK], continuation=True)
        response_ids = text.encode(responses[start:start + ENCODE_CHUNK], continuation=True)
        rows += [before_ids + p + middle_ids + r + after_ids for p, r in zip(prompt_ids, response_ids, strict=True)]
    return rows


def encode_sequences(tokenizer, prompts: list[str], responses: list[str], seq_length: int) -> list[list[int]]:
    """Token ids of each (prompt, response): one BOS, at most seq_length - 1 tokens, then EOS.

    With the built-in chat format the pair is the conversation (user prompt, assistant response) encoded as SFT
    and DPO encode it (`ChatEncoder`); with a model's own chat template, that template around the two texts;
    without a template, the plain text prompt + response. Either way prompt and response
    are user text (`UserText`): `<|assistant|>`, `</s>` … typed in them stay text.
    """
    if tokenizer.eos_token_id is None:
        raise PairDataError("the tokenizer has no EOS token; the reward model reads its score at the EOS")
    if seq_length < 2:
        raise PairDataError(f"data.seq_length must be at least 2 for a reward model, got {seq_length}")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise PairDataError("the reward model needs a fast tokenizer (a tokenizer.json); save it with "
                            "transformers' AutoTokenizer")
    rows: list[list[int]] = []
    builtin = any(token in tokenizer.get_vocab() for token in CHAT_TOKENS)
    if getattr(tokenizer, "chat_template", None) and not builtin:  # an instruct model's own template
        rows = _template_rows(tokenizer, prompts, responses)
    elif getattr(tokenizer, "chat_template", None):
        try:
            encoder = ChatEncoder(tokenizer, sys.maxsize)
        except ChatTokenizerError as err:
            raise PairDataError(str(err)) from None
        for start in range(0, len(prompts), ENCODE_CHUNK):
            chunk = zip(prompts[start:start + ENCODE_CHUNK], responses[start:start + ENCODE_CHUNK], strict=True)
            rows += [s.ids for s in encoder.encode([[{"role": "user", "content": p},
                                                     {"role": "assistant", "content": r}] for p, r in chunk])]
    else:
        bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
        text = UserText(tokenizer.backend_tokenizer)
        for start in range(0, len(prompts), ENCODE_CHUNK):
            chunk = zip(prompts[start:start + ENCODE_CHUNK], responses[start:start + ENCODE_CHUNK], strict=True)
            rows += [bos + ids for ids in text.encode([p + r for p, r in chunk])]
    eos = int(tokenizer.eos_token_id)
    return [ids[:seq_length - 1] + [eos] for ids in rows]


@dataclass
class EncodedPairs:
    """Token rows of N pairs in one flat int32 array: row 2i is pair i's chosen sequence, row 2i+1 its rejected."""

    tokens: np.ndarray
    offsets: np.ndarray
    margins: np.ndarray | None  # None when no record has a margin (a missing one counts as 0)
    identical: int = 0  # pairs dropped because both sequences came out the same

    def __len__(self) -> int:
        return (len(self.offsets) - 1) // 2

    def row(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index]:self.offsets[index + 1]]


def encode_pairs(tokenizer, pairs: list[Pair], seq_length: int) -> EncodedPairs:
    """Encode every pair (both sequences), dropping the ones whose sequences are identical."""
    chosen = encode_sequences(tokenizer, [p.prompt for p in pairs], [p.selected for p in pairs], seq_length)
    rejected = encode_sequences(tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs], seq_length)
    rows, margins, identical = [], [], 0
    for pair, a, b in zip(pairs, chosen, rejected, strict=True):
        if a == b:
            identical += 1
            continue
        rows += [a, b]
        margins.append(pair.margin or 0.0)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=int(offsets[-1]))
    has_margin = any(p.margin is not None for p in pairs)
    return EncodedPairs(tokens, offsets, np.asarray(margins, dtype=np.float32) if has_margin else None, identical)


def pair_batch(pairs: EncodedPairs, indices: list[int], fill: int) -> dict[str, torch.Tensor]:
    """One forward's worth of pairs: chosen rows first, then rejected rows (+ `margin` when the data has it)."""
    rows = [pairs.row(2 * i) for i in indices] + [pairs.row(2 * i + 1) for i in indices]
    batch = pad_rows(rows, fill)
    if pairs.margins is not None:
        batch["margin"] = torch.as_tensor(pairs.margins[indices], dtype=torch.float32)
    return batch


# -- the stream -----------------------------------------------------------------------------------------

class PairStream:
    """This process's micro-batches of `batch_size` pairs, epoch after epoch (see the module doc)."""

    def __init__(self, pairs: EncodedPairs, batch_size: int, rank: int, world_size: int, seed: int,
                 max_epochs: int | None, fill: int):
        self.pairs, self.batch_size, self.rank, self.world_size = pairs, batch_size, rank, world_size
        self.seed, self.max_epochs, self.fill = seed, max_epochs, fill
        self.batches = 0  # micro-batches handed out (the same on every process)
        self._order: tuple[int, np.ndarray] | None = None

    def total_batches(self) -> int | None:
        """Micro-batches per process over max_epochs (None: endless)."""
        if self.max_epochs is None:
            return None
        return self.max_epochs * len(self.pairs) // (self.world_size * self.batch_size)

    def epochs(self) -> float:
        """Epochs read so far (by stream position)."""
        return self.batches * self.world_size * self.batch_size / len(self.pairs)

    def _pair_at(self, position: int) -> int:
        epoch, index = divmod(position, len(self.pairs))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs)))
        return int(self._order[1][index])

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next micro-batch, or None when max_epochs are done."""
        total = self.total_batches()
        if total is not None and self.batches >= total:
            return None
        first = self.batches * self.world_size * self.batch_size + self.rank
        indices = [self._pair_at(first + self.world_size * j) for j in range(self.batch_size)]
        self.batches += 1
        return pair_batch(self.pairs, indices, self.fill)

    def state_dict(self) -> dict:
        return {"batches": self.batches, "pairs": len(self.pairs), "batch_size": self.batch_size,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in ("pairs", "batch_size", "world_size", "seed")}
        now = {k: v for k, v in self.state_dict().items() if k in saved}
        if saved != now:
            changed = ", ".join(f"{k} {saved[k]} → {now[k]}" for k in saved if saved[k] != now[k])
            raise ValueError(f"the reward data changed since the checkpoint ({changed}); resume with the same "
                             "files, data.batch_size, process count and train.seed, or start fresh")
        self.batches = int(state["batches"])


class PairRun:
    """What every pair stage's run object shares (reward model, DPO): micro-batches from a `PairStream`
    (`self.stream`), pairs as loss items, the stream's position as state, saves at any step."""

    stream: PairStream

    def next_step(self, n: int) -> list[dict]:
        out = []
        while len(out) < n and (batch := self.stream.next_batch()) is not None:
            out.append(batch)
        return out

    def loss_divisor(self, batch: dict) -> int:
        return batch["input_ids"].shape[0] // 2  # pairs: chosen and rejected rows in one batch

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def can_save(self) -> bool:
        return True

    def report(self) -> dict[str, float]:
        return {"data/epochs": self.stream.epochs()}
