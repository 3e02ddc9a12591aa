#!/usr/bin/env sh
# train_llms.sh across nodes: run the same command on every node; the node layout comes from the environment.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 sh train_multi_node_llms.sh ACC_CFG TRAIN_CFG [MODEL_CFG] [key=value ...]
# Environment (defaults = one node): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
# NPROC_PER_NODE (GPUs on this node, else 1). work_dir must be on a filesystem every node shares.
# Exit codes and everything else as train_llms.sh (see sh train_llms.sh --help).
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"   # the header above
    [ $# -ge 1 ] && { [ "$1" = "-h" ] || [ "$1" = "--help" ]; } && exit 0
    exit 2
fi
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
[ "${gpus:-0}" -gt 0 ] 2>/dev/null || gpus=1
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
NPROC_PER_NODE=${NPROC_PER_NODE:-$gpus}
echo "node $NODE_RANK of $NNODES, $NPROC_PER_NODE process(es) per node, master $MASTER_ADDR:$MASTER_PORT"
MAIN_PROCESS_PORT=$MASTER_PORT \
LAUNCH_ARGS="--num_machines $NNODES --machine_rank $NODE_RANK --main_process_ip $MASTER_ADDR --num_processes $((NNODES * NPROC_PER_NODE))" \
    exec sh "$(dirname "$0")/train_llms.sh" "$@"
