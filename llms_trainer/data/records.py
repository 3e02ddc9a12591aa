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

Chat formats: `{"messages": [{"role", "content"}]}`, ShareGPT `{"conversations": [{"from", "value"}]}`,
Alpaca `{"instruction", "input", "output"}` and `{"user", "assistant"}`.
Preference pairs: `{"prompt", "selected", "rejected"}` (`chosen` is accepted for `selected`).
"""

from __future__ import annotations

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


def chat_turns(record: dict) -> list[Turn] | None:
    """Chat turns [{"role", "content"}] of an SFT record, or None when no format matches."""
    if isinstance(record.get("messages"), list):
        turns = [{"role": m.get("role"), "content": m.get("content")} for m in record["messages"]
                 if isinstance(m, dict)]
    elif isinstance(record.get("conversations"), list):
        turns = [{"role": _SHAREGPT_ROLES.get(str(m.get("from")), str(m.get("from"))), "content": m.get("value")}
                 for m in record["conversations"] if isinstance(m, dict)]
    elif _text(record.get("instruction")) and _text(record.get("output")):
        prompt = record["instruction"]
        if _text(record.get("input")):
            prompt = f"{prompt}\n{record['input']}"
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    elif _text(record.get("user")) and _text(record.get("assistant")):
        turns = [{"role": "user", "content": record["user"]}, {"role": "assistant", "content": record["assistant"]}]
    else:
        return None
    valid = turns and all(t["role"] in ROLES and _text(t["content"]) for t in turns)
    has_reply = any(t["role"] == "assistant" for t in turns)
    return turns if valid and has_reply else None


def preference_pair(record: dict) -> tuple[str, str, str] | None:
    """(prompt, selected, rejected) of a reward-model record, or None."""
    prompt, rejected = _text(record.get("prompt")), _text(record.get("rejected"))
    selected = _text(record.get("selected")) or _text(record.get("chosen"))
    return (prompt, selected, rejected) if prompt and selected and rejected else None


MODES = {
    "pretrain": (pretrain_text, "no text field (expected one of: "
                 + ", ".join("+".join(f) for f in PRETRAIN_FIELDS) + ")"),
    "sft": (chat_turns, "no chat turns (expected messages[role,content], conversations[from,value], "
            "instruction+output or user+assistant, with at least one assistant turn)"),
    "reward": (preference_pair, "no preference pair (expected prompt, selected, rejected)"),
}


def record_problem(record: object, mode: str) -> str | None:
    """Why a parsed JSON value is unusable for `mode`, or None when it is fine."""
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    extract, reason = MODES[mode]
    return None if extract(record) is not None else reason
