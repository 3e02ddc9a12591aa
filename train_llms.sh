#!/usr/bin/env sh
# Continued pretraining / SFT through `accelerate launch` (CPU, DDP, DeepSpeed), one node.
#   sh train_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG] [key.sub=value ...]
# e.g.  sh train_llms.sh configs/accelerate_configs/cpu_ddp.yaml configs/pretrain_configs/tiny_demo.yaml \
#          configs/model_configs/tiny_llama.json train.num_training_steps=20
# MODEL_CFG (a config.json / YAML) initialises the model from scratch when train.ckpt is null.
# MAIN_PROCESS_PORT (env) picks the rendezvous port when several runs share a machine; LAUNCH_ARGS (env)
# adds accelerate launch options (train_multi_node_llms.sh sets the node layout through it).
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
ACC_CFG=$1
TRAIN_CFG=$2
shift 2
MODEL_CFG=""
if [ $# -gt 0 ] && [ "${1#*=}" = "$1" ]; then   # third argument without '=': the model config
    MODEL_CFG=$1
    shift
fi
HERE=$(dirname "$0")
ACCELERATE=${ACCELERATE:-accelerate}
if ! command -v "$ACCELERATE" >/dev/null 2>&1 && [ -x "$HERE/.venv/bin/accelerate" ]; then
    ACCELERATE="$HERE/.venv/bin/accelerate"
fi
PYTHON=$(dirname "$(command -v "$ACCELERATE")")/python
[ -x "$PYTHON" ] || PYTHON=python3
[ -f "$ACC_CFG" ] || { echo "error: accelerate config '$ACC_CFG' does not exist" >&2; exit 2; }
set -- --train_config "$TRAIN_CFG" ${MODEL_CFG:+--model_config "$MODEL_CFG"} "$@"
"$PYTHON" "$HERE/train_llms.py" --check "$@" >/dev/null || exit 2   # bad config: one error line, no launch
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of options
exec "$ACCELERATE" launch --config_file "$ACC_CFG" ${MAIN_PROCESS_PORT:+--main_process_port "$MAIN_PROCESS_PORT"} \
    ${LAUNCH_ARGS:-} "$HERE/train_llms.py" "$@"
