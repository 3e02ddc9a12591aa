"""RL from a chat (SFT) checkpoint: DPO on preference pairs or GRPO against a reward model / reward functions.

  python train_rl.py --train_config CFG [--model_config MODEL_CFG] [key.sub=value ...]
  sh train_rl.sh ACC_CFG TRAIN_CFG [MODEL_CFG]     (accelerate launch: DDP / DeepSpeed)

The config names its stage: `stage: dpo` (options in `dpo:`) or `stage: grpo` (options in `grpo:`); any
other value, or none, is an error. With no arguments: the tiny CPU DPO demo
(configs/rl_configs/dpo_tiny_demo.yaml), which continues from the SFT demo's checkpoint (run `make demo`
first); configs/rl_configs/grpo_tiny_demo.yaml is the GRPO demo (it also needs the reward-model demo).
DPO data: jsonl lines {"prompt", "selected" (or "chosen"), "rejected"} named by dpo.datasets. GRPO data:
jsonl lines {"prompt"} or {"messages"} (+ columns for reward functions) named by grpo.prompts.
Writes work_dir/checkpoint-<step>/ (a causal LM + tokenizer + trainer state), work_dir/metrics.jsonl,
work_dir/config.yaml, the metrics PNG and, for GRPO with grpo.eval_prompts, work_dir/grpo_eval/step_<n>.json.
Exit codes: 0 done, 2 bad input (one `error:` line; nothing in work_dir changed), 1 training diverged.
"""

from __future__ import annotations

from llms_trainer.commands import REPO_ROOT
from llms_trainer.train import cli

DEMO_CONFIG = str(REPO_ROOT / "configs/rl_configs/dpo_tiny_demo.yaml")
KEYS = ["train.train_batch_size", "data.seq_length", "data.on_bad_record"]  # after those of dpo and grpo


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, __doc__, DEMO_CONFIG, stage=("dpo", "grpo"), help_keys=KEYS)
