"""Chat tokens and template written into a tokenizer; the format itself is `llms_trainer.data.chat_format`."""

from __future__ import annotations

from pathlib import Path

from llms_trainer.data.chat_format import CHAT_TEMPLATE, CHAT_TOKENS
from llms_trainer.tokenizer import TokenizerError, new_output_dir
from llms_trainer.tokenizer.save import conform_tokenizer, save_tokenizer


def add_chat_tokens(tokenizer) -> dict:
    """Add the chat tokens as special tokens and CHAT_TEMPLATE, and apply the BOS/pad conventions (in place;
    `<|pad|>` is added only when the tokenizer has no usable pad token, see `save.conform_tokenizer`).

    Returns {"added": [tokens added], "ids": {chat token: id}, "pad_token", "pad_id", "bos_token", sizes}.
    Running it twice adds nothing.
    """
    from tokenizers import AddedToken

    before = len(tokenizer)
    existing = set(tokenizer.get_vocab())
    new = [t for t in CHAT_TOKENS if t not in existing]
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in new], special_tokens=True)
    added = list(new) + conform_tokenizer(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    return {"added": added, "size_before": before, "size_after": len(tokenizer), "ids": ids,
            "pad_token": tokenizer.pad_token, "pad_id": tokenizer.pad_token_id, "bos_token": tokenizer.bos_token}


def add_chat_tokens_to_dir(tokenizer_dir: str | Path, output: str | Path) -> dict:
    """Load an HF tokenizer dir, add chat tokens + template, save it as `output` (written whole or not at all)."""
    from transformers import AutoTokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise TokenizerError(f"{tokenizer_dir}: not a tokenizer directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise TokenizerError(f"{tokenizer_dir}: cannot load as an HF tokenizer ({err})") from err
    with new_output_dir(output) as out:
        result = add_chat_tokens(tokenizer)
        save_tokenizer(tokenizer, out, source_dir=tokenizer_dir)
    return result
