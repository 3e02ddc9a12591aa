#!/usr/bin/env python
"""Continued pretraining (data.mode: pretrain) and SFT (data.mode: sft) of causal LMs on accelerate.

  python train_llms.py --train_config CFG [--model_config MODEL_CFG] [key.sub=value ...]
  sh train_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG]            (accelerate launch: DDP / DeepSpeed)

With no arguments: the tiny CPU demo (configs/pretrain_configs/tiny_demo.yaml from
configs/model_configs/tiny_llama.json; run `python data/compress_data.py` first).
Overrides change any config key, e.g. train.lr=1e-4 train.num_training_steps=50 work_dir=runs/x.
Writes work_dir/checkpoint-<step>/ (HF model + tokenizer + trainer state), work_dir/metrics.jsonl,
work_dir/config.yaml and the metrics PNG. Exit codes: 0 done, 2 bad input, 1 training diverged.
"""

from __future__ import annotations

import argparse
import sys

DEMO_CONFIG = "configs/pretrain_configs/tiny_demo.yaml"
DEMO_MODEL_CONFIG = "configs/model_configs/tiny_llama.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_config", help=f"training YAML (default: {DEMO_CONFIG})")
    parser.add_argument("--model_config", help="config.json or YAML of a model to initialise from scratch "
                        "(used when train.ckpt is null)")
    parser.add_argument("--check", action="store_true",
                        help="only validate the config (keys, types, files) and exit; train_llms.sh does this first")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.train_config is None:
        args.train_config = DEMO_CONFIG
        args.model_config = args.model_config or DEMO_MODEL_CONFIG
    return args


def check(args: argparse.Namespace) -> int:
    from llms_trainer.config import ConfigError, load_config, require_model_source

    try:
        cfg = load_config(args.train_config, args.overrides)
        require_model_source(cfg, args.model_config, args.train_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.train_config}: ok (stage {cfg.data.mode}, {cfg.train.num_training_steps} steps, "
          f"work_dir {cfg.work_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(args)
    from llms_trainer.train.engine import NonFiniteLossError
    from llms_trainer.train.run import USER_ERRORS, run

    try:
        run(args.train_config, args.overrides, args.model_config)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
