"""Pair accuracy of a reward-model checkpoint on preference-pair files: the share of pairs whose selected
response scores above the rejected one (a tie counts as wrong), with the mean and std of the score delta.

Pairs are encoded as in training (chat template or prompt + response, EOS appended) and scored with
llms_trainer.evaluation.reward_accuracy.score_pairs, the function RL scores rollouts with.

  python utils/score_pairs.py work_dirs/tiny_demo_rm/checkpoint-90 eval_data/reward_model/test_pairs.jsonl
"""

from __future__ import annotations

import argparse
import math
import sys

from llms_trainer.cli import make_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("checkpoint", help="reward-model checkpoint dir (AutoModelForSequenceClassification + "
                        "tokenizer), e.g. work_dirs/<run>/checkpoint-<step>")
    parser.add_argument("pairs", nargs="+", help="jsonl file(s) of {prompt, selected|chosen, rejected}")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per forward (default: 8)")
    parser.add_argument("--seq_length", type=int, default=None,
                        help="tokens per sequence (default: the data.seq_length the model was trained with, "
                        "else its max_position_embeddings)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from llms_trainer.data.pairs import PairDataError, read_pairs
    from llms_trainer.model.load import ModelLoadError, check_vocab_fits
    from llms_trainer.ops.completion_rewards import check_reward_checkpoint
    from llms_trainer.ops.scores import score_pairs

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        architectures = AutoConfig.from_pretrained(args.checkpoint).architectures or []
        if not any(name.endswith("ForSequenceClassification") for name in architectures):
            raise ValueError(f"{args.checkpoint}: not a reward model ({', '.join(architectures) or 'no architecture'}"
                             "); give a checkpoint written by train_reward_model.py")
        tokenizer = check_reward_checkpoint(args.checkpoint, key="checkpoint")
        model = AutoModelForSequenceClassification.from_pretrained(
            args.checkpoint, dtype=torch.float32 if device.type == "cpu" else "auto", use_safetensors=True)
        check_vocab_fits(tokenizer, model.get_input_embeddings().num_embeddings, "checkpoint", args.checkpoint)
        model = model.to(device).eval()
        files = {path: read_pairs([path])[0] for path in args.pairs}
    except (ModelLoadError, PairDataError, OSError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    for path, pairs in files.items():
        prompts = [p.prompt for p in pairs]
        chosen = score_pairs(model, tokenizer, prompts, [p.selected for p in pairs], args.batch_size,
                             seq_length=args.seq_length)
        rejected = score_pairs(model, tokenizer, prompts, [p.rejected for p in pairs], args.batch_size,
                               seq_length=args.seq_length)
        deltas = [c - r for c, r in zip(chosen, rejected, strict=True)]
        right = sum(d > 0 for d in deltas)
        mean = sum(deltas) / len(deltas)
        std = math.sqrt(sum((d - mean) ** 2 for d in deltas) / len(deltas))
        print(f"{path}: accuracy {right / len(deltas):.4f} ({right}/{len(deltas)} pairs), "
              f"delta mean {mean:.4f} std {std:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
