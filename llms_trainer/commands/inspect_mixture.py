"""Draw tokens from compressed sources through the training data path and print per-source shares.

Shows what a training run would read. Per source: its target share and the share it got (both of tokens),
the tokens drawn (BOS + text + EOS of each document), and the epochs read (records read ÷ records in the
source). The total row is the sum of the source rows; the last line says how those tokens were packed into
rows of --seq-length and how many were carried into the next row. Defaults run on the bundled samples
(after data/compress_data.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llms_trainer.cli import make_parser
from llms_trainer.commands import REPO_ROOT
from llms_trainer.data.mixing import PolicyError, load_policy, natural_weights
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader
from llms_trainer.data.shards import ShardError, list_shards

BATCH_ROWS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data/pretrain_data",
                        help="directory of compressed sources, one sub-directory each (default: data/pretrain_data)")
    parser.add_argument("--policy", type=Path,
                        help="{source: ratio} JSON (default: none, shares proportional to raw bytes)")
    parser.add_argument("--tokenizer", type=Path, default=REPO_ROOT / "configs/tokenizers/demo_base",
                        help="HF tokenizer directory (default: configs/tokenizers/demo_base)")
    parser.add_argument("--tokens", type=int, default=200_000,
                        help="draw at least this many tokens, in whole batches (default: %(default)s)")
    parser.add_argument("--seq-length", type=int, default=256, help="tokens per packed row (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.seq_length < 1:
        parser.error("--tokens and --seq-length must be ≥ 1")
    return args


def report_lines(report: dict[str, dict], weights: dict[str, float], packed_tokens: int, rows: int,
                 seq_length: int, carried_tokens: int) -> list[str]:
    """The table: a row per source, a total row (the sum of the rows) and how the tokens were packed."""
    lines = [f"{'source':<16} {'target':>8} {'share':>8} {'tokens':>10} {'epochs':>9}",
             f"{'':<16} {'% tokens':>8} {'% tokens':>8} {'drawn':>10} {'(records)':>9}"]
    for name, row in report.items():
        lines.append(f"{name:<16} {100 * weights[name]:>8.1f} {100 * row['share']:>8.1f} {row['tokens']:>10} "
                     f"{row['epochs']:>9.2f}")
    total = sum(row["tokens"] for row in report.values())
    lines.append(f"{'total':<16} {100 * sum(weights.values()):>8.1f} {100.0 if total else 0.0:>8.1f} {total:>10}")
    lines.append(f"{total} tokens drawn = {packed_tokens} packed into {rows} rows of {seq_length} "
                 f"+ {carried_tokens} carried into the next row")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        names = sorted(p.name for p in args.data.iterdir() if (p / "manifest.json").is_file())
        if not names:
            raise ShardError(f"{args.data}: no compressed sources; run python data/compress_data.py first")
        sources = {name: list_shards(args.data / name) for name in names}
        weights = load_policy(args.policy, names) if args.policy else natural_weights(sources)
    except (OSError, ShardError, PolicyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    except (OSError, ValueError) as err:
        print(f"error: {args.tokenizer}: cannot load a tokenizer ({err})", file=sys.stderr)
        return 2
    spec = PretrainSpec(sources=sources, weights=weights, seq_length=args.seq_length, batch_size=BATCH_ROWS)
    loader = ResumableLoader(PretrainData(spec, tokenizer))
    packed = rows = 0
    try:
        for batch in loader:
            packed += int(batch["attention_mask"].sum())
            rows += int(batch["attention_mask"].shape[0])
            if packed >= args.tokens:
                break
    except ShardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    carried = len(loader.worker_states[0]["packer"]["pending"])
    print("\n".join(report_lines(loader.report(), weights, packed, rows, args.seq_length, carried)))
    print(f"from {len(names)} sources in {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
