#!/usr/bin/env bash
# Train frejax on a Cloud TPU VM slice (v4, v5e, v5p, v6e): one JAX process per host.
#
#   launch/tpu_vm.sh create --name=frejax-pod --zone=us-west4-a --accelerator=v5litepod-256
#   launch/tpu_vm.sh copy   --name=frejax-pod --zone=us-west4-a
#   launch/tpu_vm.sh run    --name=frejax-pod --zone=us-west4-a -- \
#       --config=configs/long_video.py:scale=pod --workdir=/mnt/runs/pod1
#   launch/tpu_vm.sh logs   --name=frejax-pod --zone=us-west4-a
#   launch/tpu_vm.sh delete --name=frejax-pod --zone=us-west4-a
#
# create: the TPU VM, with the runtime image of its TPU family.
# copy:   this checkout to every worker, then a Python 3.11 venv with jax[tpu].
# run:    python -m frejax.main on every worker (--worker=all), detached; each
#         worker writes its own log ~/frejax_logs/<run>.<hostname>.log.
# logs:   the tail of every worker's log.
# delete: the TPU VM.
# Every host runs the same command; frejax.main finds the other hosts through
# the TPU metadata (frejax/distributed.py). The workdir must be storage that all
# hosts share (a GCS FUSE mount or NFS): Orbax writes each host's shards there.
#
# Options: --name, --zone, --accelerator (create), --project, --spot (create),
# --run=<log name> (run, logs; default frejax), --dry-run (or DRY_RUN=1): print
# the commands, run nothing. Arguments after -- go to frejax.main.
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

DRY_RUN=${DRY_RUN:-0}
ACTION=${1:-}
[[ -z "$ACTION" || "$ACTION" == -h || "$ACTION" == --help ]] && usage 0
shift
NAME="" ZONE="" ACCELERATOR="" PROJECT="" SPOT=0 RUN=frejax
MAIN_ARGS=()
while (($#)); do
  case "$1" in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --run=*) RUN=${1#*=} ;;
    --spot) SPOT=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$NAME" && -n "$ZONE" ]] || { echo "tpu_vm.sh: --name and --zone are required" >&2; exit 2; }

# Shell-quotes arguments, only where needed (as Python's shlex.quote).
quote() {
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a")
    else out+=("$q${a//$q/$q\\$q$q}$q"); fi
  done
  echo "${out[*]}"
}

# Prints a command as the shell would read it; runs it unless dry-running.
run() {
  echo "+ $(quote "$@")"
  if [[ "$DRY_RUN" != 1 ]]; then "$@"; fi
}

# The TPU VM runtime image of each TPU family.
runtime_version() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "tpu_vm.sh: unknown accelerator $1 (v4-*, v5litepod-*, v5p-*, v6e-*)" >&2; return 1 ;;
  esac
}

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")
REPO=$(cd "$(dirname "$0")/.." && pwd)

case "$ACTION" in
  create)
    [[ -n "$ACCELERATOR" ]] || { echo "tpu_vm.sh: create needs --accelerator" >&2; exit 2; }
    VERSION=$(runtime_version "$ACCELERATOR")
    echo "Creating TPU VM $NAME ($ACCELERATOR, runtime $VERSION) in $ZONE"
    EXTRA=()
    [[ "$SPOT" == 1 ]] && EXTRA+=(--spot)
    run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
      --version="$VERSION" "${EXTRA[@]}"
    ;;
  copy)
    echo "Copying $REPO to every worker of $NAME and installing jax[tpu] into ~/frejax_venv"
    ARCHIVE=/tmp/frejax_src.tgz
    run tar -czf "$ARCHIVE" -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./workdirs .
    run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:frejax_src.tgz" "${WHERE[@]}" --worker=all
    SETUP="rm -rf ~/frejax && mkdir -p ~/frejax && tar -xzf ~/frejax_src.tgz -C ~/frejax"
    SETUP+=" && (command -v python3.11 || (sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv))"
    SETUP+=" && python3.11 -m venv ~/frejax_venv"
    SETUP+=" && ~/frejax_venv/bin/pip install -q -e ~/frejax'[tpu]'"  # frejax + libtpu for the pinned jax
    run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$SETUP"
    ;;
  run)
    ((${#MAIN_ARGS[@]})) || { echo "tpu_vm.sh: run needs frejax.main arguments after --" >&2; exit 2; }
    ARGS=" $(quote "${MAIN_ARGS[@]}")"
    LOG="~/frejax_logs/$RUN.\$(hostname).log"
    echo "Starting python -m frejax.main$ARGS on every worker of $NAME; logs: $LOG"
    CMD="mkdir -p ~/frejax_logs && cd ~/frejax && setsid nohup ~/frejax_venv/bin/python -m frejax.main$ARGS > $LOG 2>&1 < /dev/null &"
    run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$CMD"
    ;;
  logs)
    echo "Last lines of every worker's log of run $RUN on $NAME"
    run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
      --command="for f in ~/frejax_logs/$RUN.*.log; do echo \"== \$f\"; tail -n 20 \"\$f\"; done"
    ;;
  delete)
    echo "Deleting TPU VM $NAME in $ZONE"
    run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    ;;
  *) echo "tpu_vm.sh: unknown action $ACTION (create, copy, run, logs, delete)" >&2; exit 2 ;;
esac
