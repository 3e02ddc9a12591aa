#!/usr/bin/env sh
# DPO / GRPO training through `accelerate launch` (CPU, DDP, DeepSpeed), one node.
#   sh train_rl.sh ACC_CFG TRAIN_CFG [MODEL_CFG] [key.sub=value ...]
# e.g.  sh train_rl.sh configs/accelerate_configs/ds_stage2.yaml configs/rl_configs/grpo_llama.yaml
#       sh train_rl.sh configs/accelerate_configs/cpu.yaml configs/rl_configs/dpo_tiny_demo.yaml
# Launches train_rl.py (the config's `stage:` must be dpo or grpo) through train_llms.sh: the same config
# check before launching, environment (MAIN_PROCESS_PORT, LAUNCH_ARGS, ACCELERATE), error line and exit codes
# (0 done, 2 bad input, 1 diverged); killing this script ends every rank. See sh train_llms.sh --help.
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"   # the comment block above
    [ $# -ge 1 ] && { [ "$1" = "-h" ] || [ "$1" = "--help" ]; } && exit 0
    exit 2
fi
TRAIN_ENTRY=train_rl.py exec sh "$(dirname "$0")/train_llms.sh" "$@"
