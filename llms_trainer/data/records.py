"""Records → training material: pretraining text, chat turns, preference pairs.

Pretraining fields (first match wins; parts joined with one newline):

| fields                 | text                      |
|------------------------|---------------------------|
| `text`                 | text                      |
| `title` + `content`    | title + "\\n" + content    |
| `question` + `answer`  | question + "\\n" + answer  |
| `code`                 | code                      |
| `user` + `assistant`   | user + "\\n" + assistant   |
| `content`              | content                   |

Chat formats (SFT), detected per record in this order:

| fields                                           | turns                                                  |
|--------------------------------------------------|--------------------------------------------------------|
| `messages` or `dialog`: [{`role`, `content`}]    | roles `system`, `user`, `assistant`                    |
| `conversations`: [{`from`, `value`}] (ShareGPT)  | `system`; `human`/`user` → user; `gpt`/`bot` → assistant |
| `instruction` + `output` (+ `input`) (Alpaca)    | user: instruction (+ "\\n" + input); assistant: output |
| `user` + `assistant`                             | user; assistant                                        |
| `prompt` + `response`                            | user; assistant                                        |

A conversation is an optional `system` turn first, then `user` and `assistant` turns alternating, starting
with `user` and ending with `assistant`; every content is a non-blank string. Anything else (no assistant
turn, an empty turn, a wrong order, an unknown role or format) is a bad record: `read_chat` returns the reason.

Preference pairs: `{"prompt", "selected", "rejected"}` (`chosen` is accepted for `selected`).

Every reader of JSON lines (compress, shards, pairs, prompts, eval files) parses with `parse_json_line`, which
also refuses two kinds of valid JSON no reader can use: nesting deeper than `MAX_JSON_DEPTH` levels (checked
before parsing, so nothing recurses past it) and a lone surrogate escape such as `"\\ud800"` (text that is
not Unicode: no UTF-8 writer or tokenizer accepts it).
"""

from __future__ import annotations

import json
import re

Turn = dict[str, str]

PRETRAIN_FIELDS: tuple[tuple[str, ...], ...] = (
    ("text",),
    ("title", "content"),
    ("question", "answer"),
    ("code",),
    ("user", "assistant"),
    ("content",),
)
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "bot": "assistant"}
ROLES = ("system", "user", "assistant")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def pretrain_text(record: dict) -> str | None:
    """The text a pretraining record contributes, or None when it has no text-bearing field."""
    for fields in PRETRAIN_FIELDS:
        parts = [_text(record.get(f)) for f in fields]
        if all(parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None


def _message_turns(messages: object, role_key: str, content_key: str, roles: dict[str, str]) -> list[Turn] | str:
    if not isinstance(messages, list) or not messages:
        return "the turn list is empty or not a list"
    turns: list[Turn] = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            return f"turn {number} is not an object"
        name = message.get(role_key)
        role = roles.get(name) if isinstance(name, str) else None
        if role is None:
            return f"turn {number}: {role_key} {name!r} is not one of {', '.join(sorted(roles))}"
        turns.append({"role": role, "content": message.get(content_key)})
    return turns


def _pair_turns(record: dict, user_key: str, reply_key: str) -> list[Turn]:
    return [{"role": "user", "content": record[user_key]}, {"role": "assistant", "content": record[reply_key]}]


def _alpaca_turns(record: dict) -> list[Turn] | str:
    prompt, extra = record["instruction"], record.get("input")
    if extra is not None and not isinstance(extra, str):
        return "field input is not a string"
    if isinstance(prompt, str) and extra and extra.strip():
        prompt = f"{prompt}\n{extra}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


def order_problem(turns: list[Turn]) -> str | None:
    """Why turns are not [system] + (user, assistant)+ with non-blank string contents, or None."""
    for number, turn in enumerate(turns, 1):
        if not _text(turn["content"]):
            return f"turn {number} ({turn['role']}): content is empty or not a string"
    body = turns[1:] if turns[0]["role"] == "system" else turns
    for index, turn in enumerate(body):
        number = index + 1 + len(turns) - len(body)
        expected = "user" if index % 2 == 0 else "assistant"
        if turn["role"] != expected:
            where = "is only allowed as the first turn" if turn["role"] == "system" else f"where {expected!r} belongs"
            return f"turn {number}: {turn['role']!r} {where} (order: [system], user, assistant, user, ...)"
    if not body:
        return "no assistant turn"
    if body[-1]["role"] != "assistant":
        return "the last turn is 'user': a conversation must end with an assistant turn"
    return None


def read_chat(record: dict) -> list[Turn] | str:
    """Chat turns [{"role", "content"}] of an SFT record, or the reason it is a bad record."""
    if "messages" in record or "dialog" in record:
        key = "messages" if "messages" in record else "dialog"
        turns = _message_turns(record[key], "role", "content", {r: r for r in ROLES})
    elif "conversations" in record:
        turns = _message_turns(record["conversations"], "from", "value", _SHAREGPT_ROLES)
    elif "instruction" in record and "output" in record:
        turns = _alpaca_turns(record)
    elif "user" in record and "assistant" in record:
        turns = _pair_turns(record, "user", "assistant")
    elif "prompt" in record and "response" in record:
        turns = _pair_turns(record, "prompt", "response")
    else:
        return CHAT_FORMATS_HINT
    if isinstance(turns, str):
        return turns
    return order_problem(turns) or turns


CHAT_FORMATS_HINT = ("unknown chat format (expected messages|dialog[role,content], conversations[from,value], "
                     "instruction+output, user+assistant or prompt+response)")


def chat_turns(record: dict) -> list[Turn] | None:
    """Chat turns of an SFT record, or None when it is a bad record (`read_chat` says why)."""
    turns = read_chat(record)
    return None if isinstance(turns, str) else turns


def preference_pair(record: dict) -> tuple[str, str, str] | None:
    """(prompt, selected, rejected) of a reward-model record, or None."""
    prompt, rejected = _text(record.get("prompt")), _text(record.get("rejected"))
    selected = _text(record.get("selected")) or _text(record.get("chosen"))
    return (prompt, selected, rejected) if prompt and selected and rejected else None


def _chat_problem(record: dict) -> str | None:
    turns = read_chat(record)
    return turns if isinstance(turns, str) else None


def _found(extract, reason: str):
    return lambda record: None if extract(record) is not None else reason


MODES = {  # mode → record → problem or None
    "pretrain": _found(pretrain_text, "no text field (expected one of: "
                       + ", ".join("+".join(f) for f in PRETRAIN_FIELDS) + ")"),
    "sft": _chat_problem,
    "reward": _found(preference_pair, "no preference pair (expected prompt, selected, rejected)"),
}


MAX_JSON_DEPTH = 100  # nesting levels of arrays and objects a JSON line may have
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string literal (escapes included)
_BRACKETS = re.compile(r"[\[\]{}]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff written as an escape
_SURROGATE = re.compile("[\ud800-\udfff]")


class UnusableJSON(ValueError):
    """Valid JSON that no reader may use: nested deeper than MAX_JSON_DEPTH, or holding a lone surrogate."""


def _too_deep(text: str) -> bool:
    """Whether brackets outside string literals nest deeper than MAX_JSON_DEPTH (a loop, no recursion)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _lone_surrogate(value: object) -> str | None:
    """The first lone surrogate character in any string (key or value) of a parsed value, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if found := _SURROGATE.search(item):
                return found.group()
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def load_json_line(text: str) -> object:
    """`json.loads(text)`, refusing what no reader may use; raises json.JSONDecodeError or UnusableJSON."""
    if _too_deep(text):
        raise UnusableJSON(f"nested deeper than {MAX_JSON_DEPTH} levels of arrays/objects")
    try:
        value = json.loads(text)
    except RecursionError:  # only for text that is not JSON anyway: _too_deep bounds valid JSON
        raise UnusableJSON(f"nested deeper than {MAX_JSON_DEPTH} levels of arrays/objects") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and (char := _lone_surrogate(value)):
        raise UnusableJSON(f"a lone surrogate escape \\u{ord(char):04x} (not Unicode text: it cannot be "
                           "encoded as UTF-8 or tokenized)")
    return value


def parse_json_line(text: str) -> tuple[object, str | None]:
    """(value, None) for a usable JSON line, else (None, why): not JSON, too deep, or a lone surrogate."""
    try:
        return load_json_line(text), None
    except json.JSONDecodeError as err:
        return None, json_problem(err)
    except UnusableJSON as err:
        return None, str(err)


def json_problem(err: json.JSONDecodeError) -> str:
    """Why a line is not JSON, e.g. `not JSON (Unterminated string starting at column 10)`."""
    return f"not JSON ({err.msg.removesuffix(' at')} at column {err.colno})"  # some messages end in "at"


def record_problem(record: object, mode: str) -> str | None:
    """Why a parsed JSON value is unusable for `mode`, or None when it is fine."""
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    return MODES[mode](record)
