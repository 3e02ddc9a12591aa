#!/usr/bin/env sh
# train_rl.sh across nodes: run the same command on every node; the node layout comes from the environment,
# as for train_multi_node_llms.sh.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 sh train_multi_node_rl.sh ACC_CFG TRAIN_CFG [key=value ...]
# Environment (defaults = one node): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500),
# NPROC_PER_NODE (GPUs on this node, else 1). work_dir must be on a filesystem every node shares.
# Exit codes and everything else as train_llms.sh (see sh train_llms.sh --help).
set -eu
if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"   # the comment block above
    [ $# -ge 1 ] && { [ "$1" = "-h" ] || [ "$1" = "--help" ]; } && exit 0
    exit 2
fi
TRAIN_ENTRY=train_rl.py exec sh "$(dirname "$0")/train_multi_node_llms.sh" "$@"
