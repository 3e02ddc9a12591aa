"""Draw tokens from compressed sources through the training data path and print per-source shares.

Shows what a training run would read: tokens drawn per source, their share against the policy, and how
many epochs of each source that is. Defaults run on the bundled samples (after data/compress_data.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llms_trainer.data.mixing import PolicyError, load_policy, natural_weights  # noqa: E402
from llms_trainer.data.pipeline import PretrainData, PretrainSpec, ResumableLoader  # noqa: E402
from llms_trainer.data.shards import ShardError, list_shards  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT / "data/pretrain_data",
                        help="directory of compressed sources (one sub-directory each)")
    parser.add_argument("--policy", type=Path, help="{source: ratio} JSON (default: proportional to raw size)")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "configs/tokenizers/demo_base",
                        help="HF tokenizer directory")
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens to draw")
    parser.add_argument("--seq-length", type=int, default=256)
    return parser.parse_args(argv)


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

    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer))
    spec = PretrainSpec(sources=sources, weights=weights, seq_length=args.seq_length, batch_size=8)
    loader = ResumableLoader(PretrainData(spec, tokenizer))
    drawn = 0
    for batch in loader:
        drawn += int(batch["attention_mask"].sum())
        if drawn >= args.tokens:
            break
    print(f"{'source':<16} {'target':>7} {'share':>7} {'tokens':>9} {'epochs':>7}")
    for name, row in loader.report().items():
        print(f"{name:<16} {weights[name]:>7.3f} {row['share']:>7.3f} {row['tokens']:>9} {row['epochs']:>7.2f}")
    print(f"drew {drawn} tokens from {len(names)} sources in {args.data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
