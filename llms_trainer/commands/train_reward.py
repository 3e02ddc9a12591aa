"""Reward model training: a 1-label sequence classifier on preference pairs (the stage is always `reward`).

  python train_reward_model.py --train_config CFG [--model_config MODEL_CFG] [key.sub=value ...]
  sh train_reward_model.sh ACC_CFG TRAIN_CFG [MODEL_CFG]     (accelerate launch: DDP / DeepSpeed)

With no arguments: the tiny CPU demo (configs/reward_model_configs/tiny_demo.yaml), which continues from the
tiny pretraining demo's checkpoint (run `python train_llms.py` first).
Data: jsonl lines {"prompt", "selected" (or "chosen"), "rejected", optional "margin"} named by
data.reward_model_datasets (files, globs, or shards of `data/compress_data.py --mode reward`).
Writes work_dir/checkpoint-<step>/ (an AutoModelForSequenceClassification + tokenizer + trainer state;
config.json carries reward_mean/reward_std of the last eval and reward_seq_length), work_dir/metrics.jsonl,
work_dir/config.yaml, the metrics PNG and work_dir/reward_eval/delta_hist_step<n>.png.
Exit codes: 0 done, 2 bad input (one `error:` line; nothing in work_dir changed), 1 training diverged.
"""

from __future__ import annotations

from llms_trainer.commands import REPO_ROOT
from llms_trainer.train import cli

DEMO_CONFIG = str(REPO_ROOT / "configs/reward_model_configs/tiny_demo.yaml")
KEYS = ["data.seq_length", "train.num_training_epochs", "train.num_training_steps", "train.downscale_weight",
        "train.use_lora", "data.on_bad_record", "eval.batch_size"]  # after those of the reward stage


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, __doc__, DEMO_CONFIG, stage="reward", help_keys=KEYS)
