"""Compress jsonl files into validated zstd shards + manifest (one directory per source).

With no arguments it compresses the bundled samples:
  data/shuffled_data/pretrain/*.jsonl -> data/pretrain_data/<source>/   (mode pretrain)
  data/shuffled_data/sft/*.jsonl      -> data/sft_data/<source>/        (mode sft)
Works from the repository root and from data/. Source names (file stems, or --name) are plain names:
letters, digits, _ - . (not starting with a dot). An input that yields no records (an empty file) is an
error. Any error leaves earlier output untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.data.compress import (
    BAD_LINE_POLICIES,
    compress_sources,
    expand_inputs,
    summary_lines,
)
from llms_trainer.data.records import MODES
from llms_trainer.data.shards import ShardError, SourceNameError, check_source_name

BUNDLED = [
    (REPO_ROOT / "data/shuffled_data/pretrain/*.jsonl", REPO_ROOT / "data/pretrain_data", "pretrain"),
    (REPO_ROOT / "data/shuffled_data/sft/*.jsonl", REPO_ROOT / "data/sft_data", "sft"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--input", nargs="+", metavar="FILE|GLOB", help="jsonl files (default: bundled samples)")
    parser.add_argument("--output", help="output directory; each source goes to OUTPUT/<source>/")
    parser.add_argument("--name", help="put all inputs into one source of this name: letters, digits, _ - . "
                        "(default: one source per file stem)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-records", type=int, help="records per shard")
    size.add_argument("--shard-mb", type=float, help="raw (uncompressed) MB per shard (default 32)")
    parser.add_argument("--mode", choices=sorted(MODES), default="pretrain",
                        help="which fields a record must carry (default: pretrain)")
    parser.add_argument("--on-bad-line", choices=BAD_LINE_POLICIES, default="error",
                        help="error: stop at FILE:LINE, write nothing; skip: count and report bad lines")
    args = parser.parse_args(argv)
    if bool(args.input) != bool(args.output):
        parser.error("--input and --output go together (give neither to compress the bundled samples)")
    if args.shard_records is not None and args.shard_records < 1:
        parser.error("--shard-records must be ≥ 1")
    if args.shard_mb is not None and args.shard_mb <= 0:
        parser.error("--shard-mb must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = [([str(p)], out, mode) for p, out, mode in BUNDLED] if not args.input else [
        (args.input, Path(args.output), args.mode)]
    try:
        if args.name is not None:  # checked before anything is read or written
            check_source_name(args.name)
        for patterns, output, mode in jobs:
            sources = expand_inputs(patterns, args.name)
            manifests = compress_sources(sources, output, mode=mode, on_bad_line=args.on_bad_line,
                                         shard_records=args.shard_records, shard_mb=args.shard_mb)
            print("\n".join(summary_lines(manifests, output)))
    except SourceNameError as err:
        print(f"error: --name: {err}" if args.name is not None else f"error: {err}", file=sys.stderr)
        return 2
    except (OSError, ShardError, ValueError) as err:  # bad lines, empty sources, missing files, disk errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
