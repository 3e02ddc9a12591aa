"""Resize a model's input and output embeddings to a new (extended) tokenizer and mean-initialise new rows.

--init pieces (default): a new token's input and output rows are the mean of the old rows of its pieces
under the old tokenizer; special tokens and tokens with no old pieces get the mean of all old rows. New
tokens compete with old ones from step 0 (English predictions get worse).
--init mean: input and output rows are the mean of all old rows: the old tokens' predictions barely change,
new tokens start improbable and, as inputs, carry no meaning of their pieces.
--init pieces_in_mean_out: input rows as pieces, output rows as mean: new tokens read as their pieces and
start improbable. Needs separate output embeddings: with a tied model add --untie (copies the shared matrix:
vocab × hidden more parameters, the model stays untied).
Old rows stay bit-identical, tied embeddings stay tied (unless --untie), config.vocab_size is updated.
Saves the model (HF format) with the new tokenizer.

  python utils/extend_model_token_embeddings.py --model MODEL_DIR --new-tokenizer work_dirs/tokenizer/chat \\
      --output work_dirs/tokenizer/extended_model
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.model.embeddings import INITS, extend_model
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
    parser.add_argument("--init", choices=INITS, default="pieces", help="how new rows start (see above)")
    parser.add_argument("--untie", action="store_true", help="give a tied model its own output embeddings first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = extend_model(args.model, args.old_tokenizer or args.model, args.new_tokenizer, args.output,
                              args.init, args.untie)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"embedding rows {result['old_rows']} -> {result['new_rows']} "
          f"({'tied' if result['tied'] else 'untied'} input/output embeddings)")
    for rule, count in result["rules"].items():
        print(f"  {count} rows: {RULE_NAMES[rule]}")
    if args.init != "pieces":
        print(f"  --init {args.init}: " + ("every new row is the mean of all old rows" if args.init == "mean"
                                           else "output rows are the mean of all old output rows"))
    print(f"wrote {result['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
