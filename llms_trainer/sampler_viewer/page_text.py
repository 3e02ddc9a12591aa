"""Text shown literally on a streamlit page.

Streamlit renders Markdown (plus its own `:color[...]`, `:emoji:` and `$LaTeX$` syntax) in table cells, widget
labels, captions and messages. Names come from the disk or the user (a directory called `**x** [y](url)`), so
every name and message is passed through `literal` first: each ASCII punctuation character gets a backslash,
which Markdown turns back into that character, so nothing is bold, linked, coloured or typeset.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")  # every ASCII punctuation character (CommonMark escapable)


def literal(text: object) -> str:
    """`text` as a string that Markdown shows character for character."""
    return _PUNCTUATION.sub(r"\\\1", str(text))


def code(text: object) -> str:
    """`text` as an inline code span (shown literally, in code font), whatever backticks it holds."""
    text = str(text)
    if "`" not in text:
        return f"`{text}`"
    fence = "`" * (max(len(run) for run in re.findall("`+", text)) + 1)
    return f"{fence} {text} {fence}"  # CommonMark strips one space on each side
