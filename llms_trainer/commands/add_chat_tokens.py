"""Add the chat special tokens <|system|> <|user|> <|assistant|> <|endofchat|> (one id each, never split)
and the chat template, so that tokenizer.apply_chat_template(messages) yields exactly the text and ids SFT
trains on (llms_trainer/data/chat_format.py). The output adds one BOS to plain tokenizer(text) calls, has a pad
token distinct from EOS (<unk>, or a new <|pad|> when there is none) and keeps tokenizer.model.

  python utils/add_chat_tokens.py --tokenizer work_dirs/tokenizer/merged --output work_dirs/tokenizer/chat
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.data.chat_format import render_chat
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.chat import add_chat_tokens_to_dir

EXAMPLE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
           {"role": "assistant", "content": "Hello!"}]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--tokenizer", default=str(REPO_ROOT / "work_dirs/tokenizer/merged"),
                        help="HF tokenizer dir")
    parser.add_argument("--output", default=str(REPO_ROOT / "work_dirs/tokenizer/chat"),
                        help="output HF tokenizer dir (must not exist)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = add_chat_tokens_to_dir(args.tokenizer, args.output)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"added {len(result['added'])} tokens ({result['size_before']} -> {result['size_after']}): "
          + ", ".join(f"{t}={i}" for t, i in result["ids"].items())
          + f"; pad token {result['pad_token']}={result['pad_id']}")
    print(f"chat template example: {render_chat(EXAMPLE, result['bos_token'])!r}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
