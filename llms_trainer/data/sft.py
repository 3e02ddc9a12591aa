"""SFT data: chat records → ids with labels by construction → whole conversations in rows → batches.

Encoding. A conversation is the text `data/chat_format.py` defines (`chat_segments`), with one BOS id first
when the tokenizer has one. Labels equal the ids on assistant content and its `<|endofchat|>`, -100 on the
rest (BOS, system and user turns, role tokens, separators). The format text (role tokens, `<|endofchat|>`,
separators) and each message content are encoded apart: contents with special tokens switched off, so text
that spells `<|user|>`, `<s>` … inside a message stays text and never becomes a control id. A content sits
between two special tokens in the rendered text, so it is encoded as a continuation (no leading "▁"); for
ordinary text the ids equal those of tokenising the whole rendered text (`chat.tokenize_segments`).

Truncation to `seq_length`: the earliest user→assistant pairs are dropped (a system turn stays) until the
conversation fits; if the system turn and the last pair still do not fit, the row is cut at `seq_length`
(kept tokens keep their labels). A conversation left without a trained token is dropped and counted.

Huge messages. A content longer than `max_content_chars` = 2 × seq_length × (characters of the longest
token of the vocabulary; special tokens left out, they stay text in contents) is cut to that many characters
before it is encoded, so a 5 MB message costs what a message of that length does. A token covers at most
that many characters, so the cut text still holds at least 2 × seq_length tokens: the conversation could not
fit either way, and every token a row can keep lies at least seq_length tokens before the cut, so the ids kept
equal those of the whole text. (Should a tokenizer's normalizer shrink text so that the cut holds fewer
tokens, the whole content is encoded instead.)

Rows. With `pack`, `pack_buffer_conversations` conversations at a time are grouped into rows of
`seq_length` by best-fit-decreasing; in a row each conversation's positions restart at 0 and conversations
never attend to each other (`packing.collate_packed`, `packing.model_inputs`). Without `pack`, a row is one
conversation and a batch is padded to its longest row (to `seq_length` with `pad_to_max`).

Resume. A unit's state is the mixture state at the start of the current packing buffer plus the rows of that
buffer already emitted: resuming re-reads and re-packs that buffer (deterministically) and skips them.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .chat_format import ASSISTANT_TOKEN, CHAT_TOKENS, CONTINUATION, END_TOKEN, UserText, chat_segments
from .mixing import Mixture, TokenizedSource, mixture_report
from .packing import IGNORE_INDEX, best_fit_decreasing, collate_packed, collate_rows
from .pipeline import PretrainData, ResumableLoader
from .records import read_chat
from .shards import ShardError, ShardInfo
from .stream import BadRecordError, SourceStream

BAD_RECORD_POLICIES = ("error", "skip")
COUNTS = ("conversations", "truncated", "dropped", "bad_records")
_SENTINEL = CONTINUATION  # a content may not hold it (see UserText)
_SLOT = re.compile("\x00(\\d+)\x00")  # a content placeholder in the rendered format


class ChatTokenizerError(ValueError):
    """A tokenizer that cannot encode the chat format (the message says how to fix it)."""


@dataclass(slots=True)
class Sample:
    """One encoded conversation: ids, labels (-100 where untrained), and whether truncation changed it."""

    ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)


class ChatEncoder:
    """Turn lists → `Sample`s of at most `seq_length` tokens (None when nothing is left to train)."""

    def __init__(self, tokenizer, seq_length: int):
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        if backend is None:
            raise ChatTokenizerError(f"{where}: SFT needs a fast tokenizer (a tokenizer.json); save it with "
                                     "transformers' AutoTokenizer (utils/add_chat_tokens.py writes one)")
        self.seq_length = seq_length
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.format_tokenizer = Tokenizer.from_str(backend.to_str())
        self.format_tokenizer.no_truncation()
        self.format_tokenizer.no_padding()
        self.format_tokenizer.encode_special_tokens = False
        self.user_text = UserText(backend)  # special-token text inside contents stays text
        self._check_chat_tokens(tokenizer, where)
        self.max_content_chars = 2 * seq_length * self._longest_token_chars()  # module doc: "Huge messages"
        self._format_cache: dict[str, list[int]] = {}
        self._plans: dict[tuple[str, ...], list[tuple[list[int] | int, bool]]] = {}

    def _check_chat_tokens(self, tokenizer, where: str) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in CHAT_TOKENS if t not in vocab]
        fix = ("add them with `python utils/add_chat_tokens.py --tokenizer DIR --output CHAT_DIR`, train with "
               "CHAT_DIR (data.tokenizer_path) and set train.resize_model_vocab_size: true so the model's "
               "embeddings grow to the chat tokenizer")
        if missing:
            raise ChatTokenizerError(f"{where}: the tokenizer lacks the chat tokens {', '.join(missing)}; {fix}")
        for token in CHAT_TOKENS:
            as_format = self.format_tokenizer.encode(token, add_special_tokens=False).ids
            if as_format != [vocab[token]] or self.encode_texts([token])[0] == [vocab[token]]:
                raise ChatTokenizerError(f"{where}: {token} is not a special token of the tokenizer; {fix}")

    def _longest_token_chars(self) -> int:
        """Characters of the longest token a content can be encoded to (special tokens stay text in contents)."""
        backend = self.user_text.backend
        added = [t.content for t in backend.get_added_tokens_decoder().values() if not t.special]
        return max(map(len, [*backend.get_vocab(with_added_tokens=False), *added]))

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids of message contents, each a continuation after a special token, special-token text kept text."""
        return self.user_text.encode(texts, continuation=True)

    def encode_contents(self, texts: list[str]) -> list[list[int]]:
        """`encode_texts` for contents that will be truncated to `seq_length`: a content longer than
        `max_content_chars` is cut to it first (module doc, "Huge messages")."""
        limit = self.max_content_chars
        ids = self.encode_texts([text[:limit] for text in texts])
        for index, text in enumerate(texts):
            if len(text) > limit and len(ids[index]) < 2 * self.seq_length:  # a normalizer shrank the text
                ids[index] = self.encode_texts([text])[0]
        return ids

    def _format_ids(self, text: str) -> list[int]:
        if text not in self._format_cache:  # encoded behind END_TOKEN: a continuation, like the contents
            self._format_cache[text] = self.format_tokenizer.encode(END_TOKEN + text, add_special_tokens=False).ids[1:]
        return self._format_cache[text]

    def _plan(self, roles: tuple[str, ...]) -> list[tuple[list[int] | int, bool]]:
        """The pieces of a conversation with these roles: (format ids or content index, trained)."""
        if roles not in self._plans:
            turns = [{"role": role, "content": f"\x00{i}\x00"} for i, role in enumerate(roles)]
            plan: list[tuple[list[int] | int, bool]] = []
            for segment in chat_segments(turns):
                for k, part in enumerate(_SLOT.split(segment.text)):
                    if k % 2:
                        plan.append((int(part), segment.train))
                    elif part:
                        plan.append((self._format_ids(part), segment.train))
            self._plans[roles] = plan
        return self._plans[roles]

    def _assemble(self, roles: tuple[str, ...], contents: list[list[int]]) -> tuple[list[int], list[int]]:
        ids, labels = list(self.bos), [IGNORE_INDEX] * len(self.bos)
        for piece, train in self._plan(roles):
            part = contents[piece] if isinstance(piece, int) else piece
            ids += part
            labels += part if train else [IGNORE_INDEX] * len(part)
        return ids, labels

    def _length(self, roles: tuple[str, ...], contents: list[list[int]]) -> int:
        return len(self.bos) + sum(len(contents[p]) if isinstance(p, int) else len(p) for p, _ in self._plan(roles))

    def _fit(self, roles: tuple[str, ...], contents: list[list[int]]) -> Sample | None:
        system = [0] if roles[0] == "system" else []
        first = len(system)
        for start in range(first, len(roles), 2):  # drop the earliest user→assistant pairs first
            keep = system + list(range(start, len(roles)))
            kept_roles, kept = tuple(roles[k] for k in keep), [contents[k] for k in keep]
            if self._length(kept_roles, kept) <= self.seq_length:
                return Sample(*self._assemble(kept_roles, kept), truncated=start > first)
        ids, labels = self._assemble(kept_roles, kept)
        labels = labels[: self.seq_length]
        if all(label == IGNORE_INDEX for label in labels):
            return None
        return Sample(ids[: self.seq_length], labels, truncated=True)

    def prompt_ids(self, turns: list[dict]) -> list[int]:
        """Ids of a conversation ending with a user turn, plus the generation prompt `<|assistant|>`: what a
        model sees before it replies (one BOS; role tokens typed in messages stay text)."""
        contents = self.encode_texts([t["content"] for t in turns])
        ids, _ = self._assemble(tuple(t["role"] for t in turns), contents)
        return ids + self._format_ids(ASSISTANT_TOKEN)

    def encode(self, conversations: list[list[dict]]) -> list[Sample | None]:
        """One `Sample` per conversation (turns as `records.read_chat` gives them), None when dropped."""
        texts = [turn["content"] for turns in conversations for turn in turns]
        flat = iter(self.encode_contents(texts))
        return [self._fit(tuple(t["role"] for t in turns), [next(flat) for _ in turns]) for turns in conversations]


class ChatSource(TokenizedSource):
    """Samples of one source, encoded `batch_docs` records at a time; bad records raise or are counted.

    Each buffered sample keeps the stream state and the counts from before its record, so the saved state
    (`{"stream", "counts"}`) is that of the first sample not yet handed out and counts never double on resume.
    """

    def __init__(self, stream: SourceStream, encoder: ChatEncoder, on_bad_record: str = "error",
                 batch_docs: int = 64):
        super().__init__(stream, read_chat, encoder.encode_texts, batch_docs, on_bad_record)
        self.encoder = encoder
        self.counts: dict = dict.fromkeys(COUNTS, 0)

    def state_dict(self) -> dict:
        stream_state, counts = self._buffer[0][0] if self._buffer else (self.stream.state_dict(), self.counts)
        return {"stream": stream_state, "counts": dict(counts)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.counts = {**dict.fromkeys(COUNTS, 0), **state.get("counts", {})}

    def _read(self, record: dict | str) -> list[dict] | str:
        """The record's turns, or "SHARD:LINE: reason" for a bad record (raised under on_bad_record=error)."""
        turns = record if isinstance(record, str) else read_chat(record)
        if isinstance(turns, list) and any(_SENTINEL in t["content"] for t in turns):
            turns = "contains the character U+F0000, reserved by the SFT encoder"
        if isinstance(turns, list):
            return turns
        path, line = self.stream.position or ("?", 0)
        if self.on_bad_record == "error":
            raise BadRecordError(f"{path}:{line}: bad SFT record: {turns}. Fix the record (data/compress_data.py "
                                 "--mode sft checks every line) or set data.on_bad_record: skip")
        return f"{path}:{line}: {turns}"

    def _fill(self) -> None:
        """Buffer the next samples; returns with an empty buffer only when the stream has ended."""
        if self._records is None:
            self._records = iter(self.stream)
        while not self._buffer:
            events: list[tuple[dict, list[dict] | str]] = []  # (stream state before the record, turns or reason)
            while len(events) < self.batch_docs:
                before = self.stream.state_dict()
                record = next(self._records, None)
                if record is None:
                    break
                events.append((before, self._read(record)))
            if not events:
                return
            self._encode(events)

    def _encode(self, events: list[tuple[dict, list[dict] | str]]) -> None:
        samples = iter(self.encoder.encode([t for _, t in events if not isinstance(t, str)]))
        for before, turns in events:
            counts = dict(self.counts)
            sample = None if isinstance(turns, str) else next(samples)
            if sample is not None:
                self.counts["conversations"] += 1
                self.counts["truncated"] += sample.truncated
                self._buffer.append(((before, counts), sample))
                self._skipped_in_a_row = 0
                continue
            if isinstance(turns, str):
                self.counts["bad_records"] += 1
                self.counts.setdefault("first_bad", turns)
            else:
                self.counts["dropped"] += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row > self.stream.total_records:  # a whole epoch unusable: would never end
                raise ShardError(f"{self.stream.shards[0].path.parent}: none of its {self.stream.total_records} "
                                 "records is a usable conversation (bad records or nothing left to train after "
                                 "truncation); check data.data and data.seq_length")


class ConversationPacker:
    """Rows (lists of `Sample`) from a mixture: `buffer` samples at a time grouped by best-fit-decreasing into
    rows of `seq_length` (rows in a seeded order), or one sample per row when `pack` is false."""

    def __init__(self, mixture: Mixture, seq_length: int, buffer: int, pack: bool = True, seed: int = 0):
        self.mixture, self.seq_length, self.pack, self.seed = mixture, seq_length, pack, seed
        self.buffer = max(1, buffer) if pack else 1
        self.start = self.end = mixture.state_dict()  # mixture states before and after the current buffer
        self.rows_done = self.buffers = 0

    def state_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "rows_done": self.rows_done, "buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        self.mixture.load_state_dict(state["start"])
        self.start, self.end = state["start"], state["end"]
        self.rows_done, self.buffers = int(state["rows_done"]), int(state["buffers"])

    def _rows(self, samples: list[Sample]) -> list[list[Sample]]:
        if not self.pack:
            return [[s] for s in samples]
        bins = best_fit_decreasing([len(s) for s in samples], self.seq_length)
        random.Random(f"pack:{self.seed}:{self.buffers}").shuffle(bins)
        return [[samples[i] for i in sorted(b)] for b in bins]

    def __iter__(self) -> Iterator[list[Sample]]:
        docs, skip = iter(self.mixture), self.rows_done
        while True:
            self.start = self.mixture.state_dict()
            samples = list(itertools.islice(docs, self.buffer))
            self.end = self.mixture.state_dict()
            if not samples:
                return
            for index, row in enumerate(self._rows(samples)):
                if index >= skip:
                    self.rows_done = index + 1
                    yield row
            skip, self.rows_done, self.buffers = 0, 0, self.buffers + 1


@dataclass
class SFTSpec:
    """Everything that defines an SFT data chain (built from the `data:` config section).

    `sources`/`weights`: shards per source (written by `compress_data --mode sft`) and target token shares,
    as for pretraining. `pack`: whole conversations packed into rows (`concat_multiple_sequence`), else one
    per row, padded per batch (to `seq_length` with `pad_to_max`). `pack_buffer_conversations`: conversations
    grouped per packing round. `on_bad_record`: error (stop at SHARD:LINE) | skip (count and report).
    """

    sources: dict[str, list[ShardInfo]]
    weights: dict[str, float]
    seq_length: int
    batch_size: int
    pack: bool = True
    pad_to_max: bool = False
    seed: int = 0
    max_epochs: int | None = None  # None: sources repeat forever (step-limited training)
    buffer_records: int = 1024
    pack_buffer_conversations: int = 1024
    on_bad_record: str = "error"
    tokenize_batch_docs: int = 64


class SFTChain:
    """The chain of one data unit: its sources' streams, the encoder, the mixture, the conversation packer."""

    def __init__(self, spec: SFTSpec, tokenizer, unit: int, num_units: int):
        encoder = ChatEncoder(tokenizer, spec.seq_length)
        self.streams = {
            name: SourceStream(shards, seed=spec.seed, unit=unit, num_units=num_units,
                               buffer_records=spec.buffer_records, max_epochs=spec.max_epochs)
            for name, shards in spec.sources.items()
        }
        sources = {n: ChatSource(s, encoder, spec.on_bad_record, spec.tokenize_batch_docs)
                   for n, s in self.streams.items()}
        self.mixture = Mixture(sources, spec.weights)
        self.packer = ConversationPacker(self.mixture, spec.seq_length, spec.pack_buffer_conversations,
                                         spec.pack, seed=spec.seed * 100003 + unit)
        self.unit = unit

    def state_dict(self) -> dict:
        return {"unit": self.unit, "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.packer.load_state_dict(state["packer"])

    def report(self, state: dict | None = None) -> dict:
        """Per source, for what was read into packing so far: tokens, share, epochs and COUNTS."""
        mixture_state = (state or self.state_dict())["packer"]["end"]
        rows = mixture_report(mixture_state, self.streams)
        for name, row in rows.items():
            row.update(mixture_state["sources"][name]["counts"])
        return rows


class SFTData(PretrainData):
    """Micro-batches for one rank: packed `{"input_ids", "labels", "position_ids", "document_ids", "state"}`,
    padded `{"input_ids", "labels", "attention_mask", "state"}`; call the model with `packing.model_inputs`."""

    chain_class = SFTChain
    count_keys = COUNTS

    def rows(self, chain: SFTChain) -> Iterator[list[Sample]]:
        return iter(chain.packer)

    def collate(self, rows: list[list[Sample]]) -> dict[str, torch.Tensor]:
        if self.spec.pack:
            packed = []
            for row in rows:
                starts = list(itertools.accumulate((len(s) for s in row[:-1]), initial=0))
                packed.append(([i for s in row for i in s.ids], [x for s in row for x in s.labels], starts))
            return collate_packed(packed, self.pad_id, self.spec.seq_length)
        samples = [row[0] for row in rows]
        return collate_rows([s.ids for s in samples], self.pad_id, self.spec.seq_length if self.spec.pad_to_max
                            else None, labels=[s.labels for s in samples])


def build_sft_loader(spec: SFTSpec, tokenizer, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                     prefetch_factor: int | None = None) -> ResumableLoader:
    """This rank's resumable SFT micro-batches (`state_dict`/`load_state_dict`/`report` as for pretraining).

    Raises ChatTokenizerError for a tokenizer without the chat tokens, ValueError for a bad spec value.
    """
    if spec.on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {spec.on_bad_record!r}")
    if spec.seq_length < 2:
        raise ValueError(f"seq_length must be ≥ 2, got {spec.seq_length}")
    return ResumableLoader(SFTData(spec, tokenizer, rank, world_size), num_workers, prefetch_factor)
