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

from llms_trainer.commands import REPO_ROOT
from llms_trainer.train import cli

DEMO_CONFIG = str(REPO_ROOT / "configs/pretrain_configs/tiny_demo.yaml")
DEMO_MODEL_CONFIG = str(REPO_ROOT / "configs/model_configs/tiny_llama.json")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, __doc__, DEMO_CONFIG, DEMO_MODEL_CONFIG)
