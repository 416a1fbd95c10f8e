#!/usr/bin/env bash
# Train frejax on several GPU nodes without a scheduler: run this once on every node.
#
#   COORDINATOR_ADDRESS=10.0.0.2:8476 NUM_NODES=2 NODE_RANK=0 \
#       launch/multinode_gpu.sh --config=configs/long_video.py:scale=pod --workdir=/shared/runs/pod1
#   (the same on the second node with NODE_RANK=1)
#
# One JAX process per node drives all of the node's GPUs. COORDINATOR_ADDRESS is
# host:port of node 0 (reachable from every node; node 0 listens on that port),
# NUM_NODES the node count, NODE_RANK this node's index in [0, NUM_NODES).
# The log goes to logs/node-<rank>.log and the terminal. The workdir must be a
# file system all nodes share.
#
# Environment: PYTHON (default python), DRY_RUN=1 or --dry-run as the first
# argument (print the command, run nothing).
set -euo pipefail

# Shell-quotes arguments, only where needed (as Python's shlex.quote).
quote() {
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a")
    else out+=("$q${a//$q/$q\\$q$q}$q"); fi
  done
  echo "${out[*]}"
}

DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == --dry-run ]]; then DRY_RUN=1; shift; fi
PYTHON=${PYTHON:-python}
for var in COORDINATOR_ADDRESS NUM_NODES NODE_RANK; do
  [[ -n "${!var:-}" ]] || { echo "multinode_gpu.sh: set $var (see the header of $0)" >&2; exit 2; }
done
[[ "$COORDINATOR_ADDRESS" == *:* ]] || {
  echo "multinode_gpu.sh: COORDINATOR_ADDRESS=$COORDINATOR_ADDRESS must be host:port" >&2; exit 2; }
[[ "$NUM_NODES" =~ ^[0-9]+$ && "$NODE_RANK" =~ ^[0-9]+$ && "$NODE_RANK" -lt "$NUM_NODES" ]] || {
  echo "multinode_gpu.sh: NODE_RANK=$NODE_RANK must be in [0, NUM_NODES=$NUM_NODES)" >&2; exit 2; }
(($#)) || { echo "multinode_gpu.sh: pass frejax.main arguments (--config=...)" >&2; exit 2; }

LOG="logs/node-$NODE_RANK.log"
echo "Node $NODE_RANK of $NUM_NODES, coordinator $COORDINATOR_ADDRESS:" \
  "python -m frejax.main $(quote "$@") on all local GPUs; log $LOG"
CMD=("$PYTHON" -m frejax.main --coordinator_address="$COORDINATOR_ADDRESS"
     --num_processes="$NUM_NODES" --process_id="$NODE_RANK" "$@")
echo "+ $(quote "${CMD[@]}")"
if [[ "$DRY_RUN" != 1 ]]; then
  mkdir -p logs
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
  "${CMD[@]}" 2>&1 | tee "$LOG"
fi
