#!/usr/bin/env sh
# Continued pretraining / SFT through `accelerate launch` (CPU, DDP, DeepSpeed), one node.
#   sh train_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG] [key.sub=value ...]
# e.g.  sh train_llms.sh configs/accelerate_configs/cpu_ddp.yaml configs/pretrain_configs/tiny_demo.yaml \
#          configs/model_configs/tiny_llama.json train.num_training_steps=20
# ACC_CFG: a file of configs/accelerate_configs/ (cpu, cpu_ddp, ds_stage1/2/3, ..._cpu, ..._offload).
# MODEL_CFG (a config.json / YAML) initialises the model from scratch when train.ckpt is null.
# Environment: MAIN_PROCESS_PORT picks the rendezvous port when several runs share a machine (default:
# accelerate's 29500); LAUNCH_ARGS adds accelerate launch options (train_multi_node_llms.sh sets the node
# layout through it); ACCELERATE names the accelerate command (default: accelerate on PATH, else .venv's);
# TRAIN_ENTRY the script launched, next to this one (default train_llms.py; train_reward_model.sh sets it).
# The config is validated before launching. Exit codes: 0 done; 2 bad input, printed as one `error:` line
# (also when a rank finds it after launch); 1 diverged (NaN/inf); other codes: a crash (see the log).
# Killing this script (even with SIGKILL) ends accelerate and every rank it started.
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"   # the header above
    [ $# -ge 1 ] && { [ "$1" = "-h" ] || [ "$1" = "--help" ]; } && exit 0
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
ENTRY="$HERE/${TRAIN_ENTRY:-train_llms.py}"
[ -f "$ENTRY" ] || { echo "error: TRAIN_ENTRY: '$ENTRY' does not exist" >&2; exit 2; }
ACCELERATE=${ACCELERATE:-accelerate}
if ! command -v "$ACCELERATE" >/dev/null 2>&1 && [ -x "$HERE/.venv/bin/accelerate" ]; then
    ACCELERATE="$HERE/.venv/bin/accelerate"
fi
PYTHON=$(dirname "$(command -v "$ACCELERATE")")/python
[ -x "$PYTHON" ] || PYTHON=python3
[ -f "$ACC_CFG" ] || { echo "error: accelerate config '$ACC_CFG' does not exist" >&2; exit 2; }
set -- --train_config "$TRAIN_CFG" ${MODEL_CFG:+--model_config "$MODEL_CFG"} "$@"
"$PYTHON" "$ENTRY" --check "$@" >/dev/null || exit 2   # bad config: one error line, no launch
# Quiet defaults for what every CPU run would otherwise warn about (both can be set by the caller):
# torch elastic's one thread per process, and DeepSpeed's "Setting accelerator to CPU".
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
command -v nvidia-smi >/dev/null 2>&1 || export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
LLMS_TRAINER_ERROR_FILE=$(mktemp "${TMPDIR:-/tmp}/llms_trainer_error.XXXXXX")
export LLMS_TRAINER_ERROR_FILE
trap 'rm -f "$LLMS_TRAINER_ERROR_FILE"' EXIT
status=0
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of options
"$PYTHON" -m llms_trainer.train.lifeline "$ACCELERATE" launch --config_file "$ACC_CFG" \
    ${MAIN_PROCESS_PORT:+--main_process_port "$MAIN_PROCESS_PORT"} ${LAUNCH_ARGS:-} "$ENTRY" "$@" \
    || status=$?
if [ -s "$LLMS_TRAINER_ERROR_FILE" ]; then   # a rank reported an error: its message is the last line
    cut -f2- "$LLMS_TRAINER_ERROR_FILE" >&2
    exit "$(cut -f1 "$LLMS_TRAINER_ERROR_FILE")"
fi
exit "$status"
