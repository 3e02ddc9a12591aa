"""Resize a model's input and output embeddings to a new (extended) tokenizer and mean-initialise new rows.

A new token's row is the mean of the old rows of its pieces under the old tokenizer; special tokens and
tokens with no old pieces get the mean of all old rows. Old rows stay bit-identical, tied embeddings stay
tied, config.vocab_size is updated. Saves the model (HF format) with the new tokenizer.

  python utils/extend_model_token_embeddings.py --model MODEL_DIR --new-tokenizer work_dirs/tokenizer/chat \\
      --output work_dirs/tokenizer/extended_model
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.model.embeddings import extend_model
from llms_trainer.tokenizer import TokenizerError

RULE_NAMES = {"pieces": "mean of its old pieces", "special": "special token: mean of all old rows",
              "no_pieces": "no old pieces: mean of all old rows"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--model", required=True, help="HF model dir (a checkpoint)")
    parser.add_argument("--old-tokenizer", help="the model's tokenizer dir (default: --model)")
    parser.add_argument("--new-tokenizer", default=str(REPO_ROOT / "work_dirs/tokenizer/chat"),
                        help="extended tokenizer dir (from merge_tokenizer.py / add_chat_tokens.py)")
    parser.add_argument("--output", default=str(REPO_ROOT / "work_dirs/tokenizer/extended_model"),
                        help="output model dir (must not exist)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = extend_model(args.model, args.old_tokenizer or args.model, args.new_tokenizer, args.output)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"embedding rows {result['old_rows']} -> {result['new_rows']} "
          f"({'tied' if result['tied'] else 'untied'} input/output embeddings)")
    for rule, count in result["rules"].items():
        print(f"  {count} rows: {RULE_NAMES[rule]}")
    print(f"wrote {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
