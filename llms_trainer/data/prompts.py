"""Prompts for online RL (GRPO): read JSON lines, encode them with the chat format, deal them to processes.

A record is `{"prompt": "..."}` (one user turn) or `{"messages": [{"role", "content"}, ...]}` (an optional
system turn, then user and assistant turns alternating, ending with a user turn: the model writes the next
assistant reply). Every other key is a column: its value travels with the prompt to reward functions,
`f(prompts, completions, **columns)`. A bad line (not UTF-8/JSON, neither field, a blank content, a wrong
role order) stops the run naming `file:line`, or is skipped and counted (`data.on_bad_record: skip`).

The prompt as the policy reads it: the chat format with the generation prompt (`ChatEncoder.prompt_ids`: one
BOS, role tokens typed in messages kept as text). The prompt as text (what reward models and functions get):
the user content of a `prompt` record; the contents of the turns joined by newlines for `messages`.

`PromptStream` deals prompts like the preference pairs: all prompts shuffled anew each epoch with (seed,
epoch), one endless stream; draw g of every process covers stream positions [g·P·K, (g+1)·P·K) for P
processes and K prompts per draw, process r taking g·P·K + r + P·j. Its exact-resume state is one number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .pairs import _units
from .records import parse_json_line, read_chat


class PromptDataError(ValueError):
    """Unusable prompt input; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class Prompt:
    turns: list[dict]
    text: str
    columns: dict
    where: str  # file:line


@dataclass
class PromptReport:
    prompts: dict[str, int] = field(default_factory=dict)  # per file
    bad: dict[str, int] = field(default_factory=dict)


PROMPT_KEYS = ("prompt", "messages")


def prompt_turns(record: object) -> list[dict] | str:
    """The turns of a prompt record, or why it is not one."""
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt must be a non-empty string"
        return [{"role": "user", "content": prompt}]
    if "messages" not in record:
        return "no prompt (expected a 'prompt' string or a 'messages' list ending with a user turn)"
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return "the last message must be a user turn (the model writes the reply to it)"
    # a valid prompt is exactly a conversation that becomes valid with one assistant reply appended
    turns = read_chat({"messages": [*messages, {"role": "assistant", "content": "reply"}]})
    return turns[:-1] if isinstance(turns, list) else turns


def prompt_text(turns: list[dict]) -> str:
    """The prompt as text for reward models and functions (see the module doc)."""
    return turns[0]["content"] if len(turns) == 1 else "\n".join(t["content"] for t in turns)


def read_prompts(entries: list[str], on_bad_record: str = "error") -> tuple[list[Prompt], PromptReport]:
    """Every prompt of the files the entries name (paths, globs or shard dirs), in order."""
    if not entries:
        raise PromptDataError("no prompt files given")
    prompts, report = [], PromptReport()
    for entry in entries:
        try:
            units = _units(entry)
        except ValueError as err:
            raise PromptDataError(str(err)) from None
        for name, source in units:
            report.prompts[name], report.bad[name] = 0, 0
            for number, line in enumerate(_text_lines(source, name), 1):
                if not line.strip():
                    continue
                record, problem = parse_json_line(line)
                turns = problem or prompt_turns(record)
                if isinstance(turns, str):
                    if on_bad_record != "skip":
                        raise PromptDataError(f"{name}:{number}: {turns}; fix the line or set data.on_bad_record: "
                                              "skip")
                    report.bad[name] += 1
                    continue
                columns = {k: v for k, v in record.items() if k not in PROMPT_KEYS}
                prompts.append(Prompt(turns, prompt_text(turns), columns, f"{name}:{number}"))
                report.prompts[name] += 1
            if report.prompts[name] == 0 and report.bad[name] == 0:
                raise PromptDataError(f"{name}: no prompts (the file is empty); add JSON lines {{\"prompt\": ...}}")
    if not prompts:
        raise PromptDataError(f"{', '.join(report.prompts)}: no usable prompts ({sum(report.bad.values())} bad lines)")
    return prompts, report


def _text_lines(source, name: str):
    """The lines of a jsonl file or shard as text; undecodable bytes are an error naming file:line."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise PromptDataError(f"{name}:{number}: not UTF-8 text") from None
    else:
        from .shards import ShardError, iter_shard_lines

        try:
            yield from iter_shard_lines(source)
        except ShardError as err:
            raise PromptDataError(str(err)) from None


def column_names(prompts: list[Prompt]) -> list[str]:
    """The union of the prompts' column names (a prompt without one passes None)."""
    return sorted({name for p in prompts for name in p.columns})


@dataclass
class PromptSet:
    """Prompts with their token ids (chat format + generation prompt) and the union of their columns."""

    prompts: list[Prompt]
    ids: list[list[int]]
    columns: list[str]
    dropped: int = 0  # prompts longer than the limit they were encoded with
    bad_lines: int = 0  # lines skipped under data.on_bad_record: skip

    def column_values(self, indices: list[int]) -> dict[str, list]:
        """{column: values of the prompts at `indices`} (None where a prompt lacks the column)."""
        return {c: [self.prompts[i].columns.get(c) for i in indices] for c in self.columns}


def encode_prompts(prompts: list[Prompt], tokenizer, max_tokens: int) -> PromptSet:
    """Token ids of each prompt (`ChatEncoder.prompt_ids`); prompts over `max_tokens` are dropped and counted.
    Raises ChatTokenizerError for a tokenizer without the chat tokens."""
    from .sft import ChatEncoder

    encoder = ChatEncoder(tokenizer, max_tokens)
    kept = [(p, ids) for p in prompts if len(ids := encoder.prompt_ids(p.turns)) <= max_tokens]
    return PromptSet([p for p, _ in kept], [ids for _, ids in kept], column_names([p for p, _ in kept]),
                     len(prompts) - len(kept))


class PromptStream:
    """This process's prompt indices, K per draw, epoch after epoch, endless (see the module doc)."""

    def __init__(self, count: int, per_draw: int, rank: int, world_size: int, seed: int):
        if count < 1:
            raise PromptDataError("no prompts to draw from")
        self.count, self.per_draw, self.rank, self.world_size, self.seed = count, per_draw, rank, world_size, seed
        self.draws = 0
        self._order: tuple[int, np.ndarray] | None = None

    def _index_at(self, position: int) -> int:
        epoch, index = divmod(position, self.count)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.count))
        return int(self._order[1][index])

    def next_draw(self) -> list[int]:
        first = self.draws * self.world_size * self.per_draw + self.rank
        self.draws += 1
        return [self._index_at(first + self.world_size * j) for j in range(self.per_draw)]

    def epochs(self) -> float:
        return self.draws * self.world_size * self.per_draw / self.count

    def state_dict(self) -> dict:
        return {"draws": self.draws, "count": self.count, "per_draw": self.per_draw, "world_size": self.world_size,
                "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state[k] for k in ("count", "per_draw", "world_size", "seed")}
        now = {k: v for k, v in self.state_dict().items() if k in saved}
        if saved != now:
            changed = ", ".join(f"{k} {saved[k]} → {now[k]}" for k in saved if saved[k] != now[k])
            raise ValueError(f"the prompts changed since the checkpoint ({changed}); resume with the same files, "
                             "batch sizes, process count and train.seed, or start fresh")
        self.draws = int(state["draws"])


def exists(entry: str) -> bool:
    """Whether a dataset entry (path, glob or shard dir) names something."""
    import glob

    return os.path.exists(entry) or bool(glob.glob(entry))
