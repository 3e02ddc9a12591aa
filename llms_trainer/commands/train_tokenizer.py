"""Train a Llama-compatible SentencePiece model (identity normalisation, byte fallback, split digits,
whitespace pieces kept) on text from shards or jsonl files. The same input gives the same model.

Writes PREFIX.model and PREFIX.vocab and prints a sample encode/decode.
Default data: data/pretrain_data (shards from data/compress_data.py) when present, else the bundled
samples data/shuffled_data/pretrain/*.jsonl.

  python utils/train_tokenizer.py --data data/pretrain_data --vocab-size 2000 --output work_dirs/tokenizer/zh
"""

from __future__ import annotations

import argparse
import sys

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.tokenizer import TokenizerError
from llms_trainer.tokenizer.train import (
    MODEL_TYPES,
    collect_sentences,
    output_paths,
    sample_encoding,
    save_model,
    train_model,
)


def default_data() -> list[str]:
    shards = REPO_ROOT / "data/pretrain_data"
    if any(shards.glob("*/manifest.json")):
        return [str(shards)]
    return [str(REPO_ROOT / "data/shuffled_data/pretrain/*.jsonl")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--data", nargs="+", metavar="GLOB|SOURCE_DIR",
                        help="shard source dirs, dirs of sources, or globs of *.jsonl.zst / *.jsonl")
    parser.add_argument("--vocab-size", type=int, default=2000, help="pieces in the model (default 2000)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="bpe", help="default bpe (as Llama)")
    parser.add_argument("--output", default=str(REPO_ROOT / "work_dirs/tokenizer/new_sp"),
                        help="output prefix: writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--max-docs-per-source", type=int, help="use only the first N documents of each source")
    parser.add_argument("--user-symbols", nargs="+", default=[], help="pieces kept whole (never split)")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters that get their own piece; the rest fall back to bytes")
    args = parser.parse_args(argv)
    if args.vocab_size < 1:
        parser.error("--vocab-size must be ≥ 1")
    if args.max_docs_per_source is not None and args.max_docs_per_source < 1:
        parser.error("--max-docs-per-source must be ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data or default_data()
    try:
        output_paths(args.output)
        sentences, stats = collect_sentences(data, args.max_docs_per_source)
        print(f"read {sum(stats.docs.values())} documents ({stats.sentences} lines) from {len(stats.docs)} sources: "
              + ", ".join(f"{name}={n}" for name, n in stats.docs.items()))
        skipped = {name: n for name, n in stats.skipped.items() if n}
        if skipped:
            print("skipped records without text: " + ", ".join(f"{name}={n}" for name, n in skipped.items()))
        model = train_model(sentences, args.vocab_size, args.model_type, tuple(args.user_symbols),
                            args.character_coverage)
        model_path, vocab_path = save_model(model, args.output)
    except TokenizerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sample = next((s for s in sentences if len(s) >= 20), sentences[0])[:80]
    pieces, decoded = sample_encoding(model, sample)
    print(f"sample: {sample!r}\n  pieces ({len(pieces)}): {' '.join(pieces)}\n  decoded: {decoded!r}")
    n_pieces = len(vocab_path.read_text(encoding="utf-8").splitlines())
    print(f"wrote {model_path} and {vocab_path} ({n_pieces} pieces, asked for {args.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
