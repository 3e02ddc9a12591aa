"""Merge a newly trained SentencePiece model into a base tokenizer; old ids keep their tokens.

BASE is a SentencePiece .model (Llama/Mistral style) or an HF tokenizer dir. SentencePiece bases are merged
at the model-proto level (new pieces appended, scored below the base so its merges keep priority); the output
is an HF tokenizer dir that also holds the merged tokenizer.model. HF fast bases without a SentencePiece model
get the new pieces as added tokens. Prints and writes OUTPUT/merge_report.json: base size, added, final size,
characters per token on the held-out --report-text before and after.

  python utils/merge_tokenizer.py --base configs/tokenizers/demo_base --add work_dirs/tokenizer/new_sp.model \\
      --output work_dirs/tokenizer/merged --report-text eval_data/pretrain/nll.jsonl
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.merge import merge_tokenizer, report_lines

DEFAULT_REPORT_TEXT = REPO_ROOT / "eval_data/pretrain/nll.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--base", default=str(REPO_ROOT / "configs/tokenizers/demo_base"),
                        help="SentencePiece .model or HF tokenizer dir (default: the demo base tokenizer)")
    parser.add_argument("--add", default=str(REPO_ROOT / "work_dirs/tokenizer/new_sp.model"),
                        help="SentencePiece .model whose pieces are added (from utils/train_tokenizer.py)")
    parser.add_argument("--output", default=str(REPO_ROOT / "work_dirs/tokenizer/merged"),
                        help="output HF tokenizer dir (must not exist)")
    parser.add_argument("--report-text", help="held-out text for characters per token: *.jsonl records or a text "
                        f"file (default: {DEFAULT_REPORT_TEXT.relative_to(REPO_ROOT)} when present)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_text = args.report_text or (str(DEFAULT_REPORT_TEXT) if DEFAULT_REPORT_TEXT.is_file() else None)
    try:
        report = merge_tokenizer(args.base, args.add, args.output, report_text)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
