#!/usr/bin/env sh
# train_llms.sh across nodes: run the same command on every node; the node layout comes from the environment.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 sh train_multi_node_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG] [key=value ...]
# Environment (defaults = one node): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
# NPROC_PER_NODE (GPUs on this node, else 1). work_dir must be on a filesystem every node shares.
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
ACC_CFG=$1
TRAIN_CFG=$2
shift 2
MODEL_CFG=""
if [ $# -gt 0 ] && [ "${1#*=}" = "$1" ]; then
    MODEL_CFG=$1
    shift
fi
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
[ "${gpus:-0}" -gt 0 ] 2>/dev/null || gpus=1
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-$gpus}
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
echo "node $NODE_RANK of $NNODES, $NPROC_PER_NODE process(es) per node, master $MASTER_ADDR:$MASTER_PORT"
exec "$ACCELERATE" launch --config_file "$ACC_CFG" \
    --num_machines "$NNODES" --machine_rank "$NODE_RANK" \
    --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    --num_processes $((NNODES * NPROC_PER_NODE)) \
    "$HERE/train_llms.py" "$@"
