#!/usr/bin/env python
"""Continued pretraining (data.mode: pretrain) and instruction tuning (data.mode: sft) on accelerate.

  python train_llms.py --train_config CFG [--model_config MODEL_CFG] [key.sub=value ...]
  sh train_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG]            (accelerate launch: DDP / DeepSpeed)

With no arguments: the tiny CPU demo (configs/pretrain_configs/tiny_demo.yaml from
configs/model_configs/tiny_llama.json; run `python data/compress_data.py` first).
Overrides change any config key, e.g. train.lr=1e-4 train.num_training_steps=50 work_dir=runs/x.
Writes work_dir/checkpoint-<step>/ (HF model + tokenizer + trainer state), work_dir/metrics.jsonl,
work_dir/config.yaml and the metrics PNG. A work_dir belongs to one run at a time; a fresh run
(train.resume=none) into a work_dir holding checkpoints stops unless train.overwrite_work_dir=true.
Exit codes: 0 done, 2 bad input (one `error:` line; nothing in work_dir changed), 1 training diverged.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llms_trainer.cli import make_parser

ROOT = Path(__file__).resolve().parent
DEMO_CONFIG = str(ROOT / "configs/pretrain_configs/tiny_demo.yaml")
DEMO_MODEL_CONFIG = str(ROOT / "configs/model_configs/tiny_llama.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
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
    """Validate the config and what the run would find in work_dir; 0 ok, 2 with one error line."""
    from llms_trainer.config import load_config, require_model_source
    from llms_trainer.train.checkpoint import resolve_resume
    from llms_trainer.train.errors import USER_ERRORS
    from llms_trainer.train.workdir import plan_lineage

    try:
        cfg = load_config(args.train_config, args.overrides)
        require_model_source(cfg, args.model_config, args.train_config)
        plan_lineage(cfg.work_dir, resolve_resume(cfg.train.resume, cfg.work_dir), cfg.train.overwrite_work_dir)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.train_config}: ok (stage {cfg.stage_name()}, {cfg.train.num_training_steps} steps, "
          f"work_dir {cfg.work_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check(args)
    from llms_trainer.train import errors
    from llms_trainer.train.lifeline import die_with_parent

    if "LOCAL_RANK" in os.environ:  # started by a launcher: end with it (torch elastic detaches ranks)
        die_with_parent()
    from llms_trainer.train.run import run

    try:
        run(args.train_config, args.overrides, args.model_config)
    except Exception as err:
        code = errors.exit_code(err)
        if code is None:
            raise
        return errors.report(err, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
