"""The chat text format: the one place it is defined, for SFT, pairs, prompts, the tokenizer's chat template
(`llms_trainer.tokenizer.chat.add_chat_tokens` writes it into a tokenizer) and evaluation.

A conversation renders as (BOS only when the tokenizer has one)::

    <s><|system|>{system}<|endofchat|>\\n<|user|>{question}<|endofchat|>\\n<|assistant|>{answer}<|endofchat|>\\n

Each turn is `ROLE_TOKEN + content + END_TOKEN + "\\n"`; a generation prompt is `<|assistant|>`, and a reply is
complete at `<|endofchat|>`. SFT trains on assistant content and its `<|endofchat|>` only.

`chat_segments` splits the text into pieces flagged train / don't train. Every boundary between a trained and
an untrained segment sits right after a special token, so tokenising segment by segment gives the same tokens
as tokenising the whole text (special tokens always split the text) — provided each segment after the first
is tokenised as a continuation, without the SentencePiece dummy prefix "▁": `tokenize_segments` does that.
`CHAT_TEMPLATE` is the same format as a Jinja template, generated from the same constants.

BOS: the template writes the BOS text itself and `apply_chat_template(tokenize=True)` encodes it without
adding special tokens, so the ids hold one BOS, as SFT builds them. The tokenizer also adds BOS to plain
`tokenizer(text)` calls (the `save` conventions), so rendered chat text must be encoded with
`add_special_tokens=False`; `tokenizer(apply_chat_template(..., tokenize=False))` would start with two BOS.
"""

from __future__ import annotations

import json
from typing import NamedTuple

SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN = "<|system|>", "<|user|>", "<|assistant|>"
END_TOKEN = "<|endofchat|>"
ROLE_TOKENS = {"system": SYSTEM_TOKEN, "user": USER_TOKEN, "assistant": ASSISTANT_TOKEN}
CHAT_TOKENS = (SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)
TURN_SEPARATOR = "\n"  # after END_TOKEN, not trained on
TRAINED_ROLE = "assistant"
CONTINUATION = "\U000f0000"  # private-use character: text encoded behind it is a continuation


class ChatFormatError(ValueError):
    """A conversation the format cannot render (no turns, an unknown role, content that is not a string)."""


class Segment(NamedTuple):
    """A run of chat text and whether SFT computes loss on its tokens."""

    text: str
    train: bool


def _check_turns(turns: list[dict]) -> None:
    if not turns:
        raise ChatFormatError("a conversation needs at least one turn")
    for number, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or turn.get("role") not in ROLE_TOKENS:
            role = turn.get("role") if isinstance(turn, dict) else turn
            raise ChatFormatError(f"turn {number}: role {role!r} is not one of {', '.join(ROLE_TOKENS)}")
        if not isinstance(turn.get("content"), str):
            raise ChatFormatError(f"turn {number}: content must be a string, got {type(turn.get('content')).__name__}")


def chat_segments(turns: list[dict], bos_token: str | None = None,
                  add_generation_prompt: bool = False) -> list[Segment]:
    """The chat text of `turns` ({"role", "content"}) as segments; adjacent segments never share a flag."""
    _check_turns(turns)
    pieces: list[Segment] = [Segment(bos_token, False)] if bos_token else []
    for turn in turns:
        if turn["role"] == TRAINED_ROLE:
            pieces += [Segment(ASSISTANT_TOKEN, False), Segment(turn["content"] + END_TOKEN, True),
                       Segment(TURN_SEPARATOR, False)]
        else:
            pieces.append(Segment(ROLE_TOKENS[turn["role"]] + turn["content"] + END_TOKEN + TURN_SEPARATOR, False))
    if add_generation_prompt:
        pieces.append(Segment(ASSISTANT_TOKEN, False))
    merged: list[Segment] = []
    for piece in pieces:
        if merged and merged[-1].train == piece.train:
            merged[-1] = Segment(merged[-1].text + piece.text, piece.train)
        else:
            merged.append(piece)
    return merged


def render_chat(turns: list[dict], bos_token: str | None = None, add_generation_prompt: bool = False) -> str:
    """The whole chat text of `turns`, exactly what `tokenizer.apply_chat_template(..., tokenize=False)` gives."""
    return "".join(s.text for s in chat_segments(turns, bos_token, add_generation_prompt))


def _literal(text: str) -> str:
    """A Jinja string literal (JSON escapes are valid Jinja escapes)."""
    return json.dumps(text, ensure_ascii=False)


def build_chat_template() -> str:
    """The Jinja chat template of this format, generated from the constants above."""
    roles = "".join(
        f"{'if' if i == 0 else 'elif'} message['role'] == {_literal(role)} %}}{{{{ {_literal(token)} }}}}{{%- "
        for i, (role, token) in enumerate(ROLE_TOKENS.items()))
    return (
        "{%- if bos_token %}{{ bos_token }}{% endif -%}"
        "{%- for message in messages -%}"
        f"{{%- {roles}else %}}{{{{ raise_exception('unknown chat role: ' + message['role']) }}}}{{%- endif -%}}"
        f"{{{{ message['content'] + {_literal(END_TOKEN + TURN_SEPARATOR)} }}}}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt %}}{{{{ {_literal(ASSISTANT_TOKEN)} }}}}{{% endif -%}}"
    )


CHAT_TEMPLATE = build_chat_template()


def tokenize_segments(tokenizer, segments: list[Segment]) -> tuple[list[int], list[bool]]:
    """(token ids, per-token train flags) of segments tokenised one by one, no special tokens added.

    The ids equal those of the whole rendered text: a segment after the first is tokenised behind END_TOKEN
    (a special token, so the text after it is a continuation, not a new start) and that token is dropped.
    """
    ids: list[int] = []
    flags: list[bool] = []
    for index, segment in enumerate(segments):
        if index == 0:
            part = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        else:
            part = tokenizer(END_TOKEN + segment.text, add_special_tokens=False)["input_ids"][1:]
        ids += part
        flags += [segment.train] * len(part)
    return ids, flags


class UserText:
    """The one encoding rule for text users type (message contents, prompts, pair responses, completions), in
    every stage and in reward scoring: special-token strings inside it (`<|assistant|>`, `<|endofchat|>`,
    `<s>`, `</s>` …) are encoded as the text they spell, never as control ids.

    Built from a fast tokenizer's backend (`tokenizer.backend_tokenizer`); ordinary text gets the ids the
    tokenizer gives it. `continuation=True` encodes each text as it reads right after a special token (no
    SentencePiece dummy prefix "▁"), by encoding it behind CONTINUATION and dropping that token.
    """

    def __init__(self, backend):
        from tokenizers import AddedToken, Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.add_tokens([AddedToken(CONTINUATION, special=False, normalized=False)])
        self.backend.encode_special_tokens = True

    def encode(self, texts: list[str], continuation: bool = False) -> list[list[int]]:
        """Token ids of each text (no special tokens added)."""
        if not continuation:
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
        encodings = self.backend.encode_batch([CONTINUATION + t for t in texts], add_special_tokens=False)
        return [e.ids[1:] for e in encodings]
