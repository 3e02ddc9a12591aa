"""Weighted mixture of sources by share of training tokens.

A ratio is the target share of *training tokens* drawn from a source. The mixer is deterministic: the next
document comes from the source furthest below its target (`ratio × tokens so far − tokens from it`), so
shares track the policy within about one document at every step, and the state is the tokens drawn per
source plus each source's stream state. Sources that run out start a new epoch (their stream does that).
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from .shards import ShardError
from .stream import BadRecordError, SourceStream

Encode = Callable[[list[str]], list[list[int]]]


class PolicyError(ValueError):
    """A sampling policy that cannot be used (message names the file and source)."""


def load_policy(path: str | Path, sources: list[str]) -> dict[str, float]:
    """Read `{source: ratio}` and normalise it; every ratio > 0, every name a configured source."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PolicyError(f"{path}: cannot read sample_policy_file ({err})") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolicyError(f"{path}: sample_policy_file is not JSON ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise PolicyError(f"{path}: sample_policy_file must be a JSON object {{source: ratio}}")
    return normalise_policy(raw, sources, where=str(path))


def normalise_policy(raw: dict, sources: list[str], where: str = "policy") -> dict[str, float]:
    """Validate `{source: ratio}` against the configured sources; ratios scaled to sum to 1."""
    for name, ratio in raw.items():
        if name not in sources:
            raise PolicyError(f"{where}: '{name}' is not a configured source (configured: {', '.join(sources)})")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) or ratio <= 0:
            raise PolicyError(f"{where}: ratio of '{name}' must be a number > 0, got {ratio!r}")
        if math.isinf(ratio):
            raise PolicyError(f"{where}: ratio of '{name}' must be finite")
    missing = [s for s in sources if s not in raw]
    if missing:
        raise PolicyError(f"{where}: configured source '{missing[0]}' has no ratio; add it or drop it from data.data")
    total = float(sum(raw.values()))
    return {name: raw[name] / total for name in sources}


def natural_weights(sources: dict[str, list]) -> dict[str, float]:
    """Weights proportional to each source's raw bytes (the mixture when no policy file is given)."""
    sizes = {name: sum(s.raw_bytes for s in shards) for name, shards in sources.items()}
    total = sum(sizes.values()) or 1
    return {name: size / total for name, size in sizes.items()}


class TokenizedSource:
    """Documents of one source as token lists, tokenised `batch_docs` at a time; resumable exactly.

    Each buffered document keeps the stream state and bad-record count from before it was read, so the saved
    state is that of the first document not yet handed out. A record no reader may use (the stream hands out
    why) stops the run naming SHARD:LINE (`on_bad_record="error"`) or is counted in `bad_records` (`"skip"`);
    records without a text field are skipped silently.
    """

    def __init__(self, stream: SourceStream, to_text: Callable[[dict], str | None], encode: Encode,
                 batch_docs: int = 64, on_bad_record: str = "error"):
        self.stream, self.to_text, self.encode, self.batch_docs = stream, to_text, encode, batch_docs
        self.on_bad_record = on_bad_record
        self._buffer: deque[tuple[tuple[dict, int], list[int]]] = deque()
        self._records: Iterator[dict | str] | None = None
        self.skipped = self.bad_records = 0
        self._skipped_in_a_row = 0

    def state_dict(self) -> dict:
        stream_state, bad = self._buffer[0][0] if self._buffer else (self.stream.state_dict(), self.bad_records)
        return {"stream": stream_state, "skipped": self.skipped, "bad_records": bad}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.skipped, self.bad_records = state.get("skipped", 0), state.get("bad_records", 0)
        self._buffer.clear()
        self._records = None

    def _text(self, record: dict | str) -> str | None:
        """The record's text; None (counted) for a bad record under skip; BadRecordError under error."""
        if not isinstance(record, str):
            return self.to_text(record)
        path, line = self.stream.position or ("?", 0)
        if self.on_bad_record == "error":
            raise BadRecordError(f"{path}:{line}: bad record: {record}. Fix the record or set "
                                 "data.on_bad_record: skip")
        self.bad_records += 1
        return None

    def _fill(self) -> None:
        if self._records is None:
            self._records = iter(self.stream)
        states, texts = [], []
        while len(texts) < self.batch_docs:
            before = (self.stream.state_dict(), self.bad_records)
            record = next(self._records, None)
            if record is None:
                break
            text = self._text(record)
            if text is None:
                self.skipped += 1
                self._skipped_in_a_row += 1
                if self._skipped_in_a_row > self.stream.total_records:  # a whole epoch without text: never ends
                    raise ShardError(
                        f"{self.stream.shards[0].path.parent}: none of its {self.stream.total_records} records has "
                        "text this stage can use (e.g. SFT or reward records given to pretraining); check data.data")
                continue
            self._skipped_in_a_row = 0
            states.append(before)
            texts.append(text)
        if texts:
            self._buffer.extend(zip(states, self.encode(texts), strict=True))

    def next_doc(self) -> list[int] | None:
        """The next document's token ids, or None when the stream has ended (finite epochs only)."""
        if not self._buffer:
            self._fill()
        return self._buffer.popleft()[1] if self._buffer else None


class Mixture:
    """Documents drawn from several tokenised sources to match token shares `weights` (summing to 1)."""

    def __init__(self, sources: dict[str, TokenizedSource], weights: dict[str, float]):
        self.sources, self.weights = sources, weights
        self.drawn = dict.fromkeys(sources, 0)
        self.exhausted: set[str] = set()

    def state_dict(self) -> dict:
        return {"drawn": dict(self.drawn), "exhausted": sorted(self.exhausted),
                "sources": {n: s.state_dict() for n, s in self.sources.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = {n: int(state["drawn"][n]) for n in self.sources}
        self.exhausted = set(state.get("exhausted", []))
        for name, source in self.sources.items():
            source.load_state_dict(state["sources"][name])

    def _pick(self) -> str | None:
        total = sum(self.drawn.values())
        live = [n for n in self.sources if n not in self.exhausted]
        return max(live, key=lambda n: self.weights[n] * total - self.drawn[n]) if live else None

    def tagged(self) -> Iterator[tuple[int, list[int]]]:
        """(source index in `sources` order, document) pairs, in mixture order."""
        index = {name: i for i, name in enumerate(self.sources)}
        while (name := self._pick()) is not None:
            doc = self.sources[name].next_doc()
            if doc is None:
                self.exhausted.add(name)
                continue
            self.drawn[name] += len(doc)
            yield index[name], doc

    def __iter__(self) -> Iterator[list[int]]:
        for _, doc in self.tagged():
            yield doc

    def report(self) -> dict[str, dict[str, float]]:
        """Per source: tokens drawn, their share, and epochs read (for logs and the demo)."""
        return mixture_report(self.state_dict(), {n: s.stream for n, s in self.sources.items()})


def mixture_report(state: dict, streams: dict[str, SourceStream]) -> dict[str, dict[str, float]]:
    """Tokens, share and epochs per source from a mixture state (works on states sent by workers too)."""
    total = max(1, sum(state["drawn"].values()))
    out = {}
    for name, stream in streams.items():
        epochs = stream.epochs_done(state["sources"][name]["stream"])
        out[name] = {"tokens": state["drawn"][name], "share": state["drawn"][name] / total,
                     "epochs": round(epochs, 4)}
        if stream.holdout_records:  # records kept out of training for eval/source/<name>/...
            out[name]["holdout_records"] = stream.holdout_records
    return out
