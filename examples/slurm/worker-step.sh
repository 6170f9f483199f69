#!/usr/bin/env bash
# One node's `pbt-actors worker`, run by `srun --ntasks-per-node=1` from pbt.sbatch or workers.sbatch.
#
# Why a separate script: srun starts it once per node, after SLURM has set that node's
# environment, so each node reads its own name (SLURMD_NODENAME) and its own GPU binding
# (CUDA_VISIBLE_DEVICES, set by --gpus-per-node / --gres=gpu:N); the batch script only sees
# the first node's.
#
# Reads: PBT_EXPERIMENT, PBT_CONNECT (tcp://HOST:PORT), PBT_CHECKPOINTS (shared folder),
#        optional PBT_CMD (default pbt-actors), PBT_KEYS (CURVE keys folder), PBT_CPU_WORKERS,
#        PBT_HOST_ID, PBT_WORKER_ARGS (more arguments, split on spaces).
set -euo pipefail
: "${PBT_EXPERIMENT:?set PBT_EXPERIMENT (the experiment file)}"
: "${PBT_CONNECT:?set PBT_CONNECT=tcp://HOST:PORT (the controller)}"
: "${PBT_CHECKPOINTS:?set PBT_CHECKPOINTS (a folder every node sees)}"
read -r -a PBT_CMD_ARGV <<< "${PBT_CMD:-pbt-actors}"

# Worker ids start with the host id: node name + job id, so that two jobs on one node (the
# main job and an elastic workers-only job), or two node names on one machine, never share ids.
node=${SLURMD_NODENAME:-$(hostname -s)}
host_id=${PBT_HOST_ID:-${node}-j${SLURM_JOB_ID:-0}}

# GPUs exactly as SLURM bound them; CPU-only when it bound none.
gpus=${CUDA_VISIBLE_DEVICES:-}
if [[ -n "$gpus" && "$gpus" != "NoDevFiles" ]]; then
  if [[ ! "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
    echo "worker-step.sh: CUDA_VISIBLE_DEVICES=$gpus is not a list of GPU indices (UUIDs are not supported);" \
         "set PBT_WORKER_ARGS='--devices 0,1' by hand" >&2
    exit 2
  fi
  devices=(--devices "$gpus")
else
  devices=(--devices cpu --workers "${PBT_CPU_WORKERS:-${SLURM_CPUS_PER_TASK:-1}}")
fi

curve=()
if [[ -n "${PBT_KEYS:-}" ]]; then
  curve=(--curve-server-key "$PBT_KEYS/controller.key" --curve-secret "$PBT_KEYS/worker.key_secret")
fi
read -r -a extra <<< "${PBT_WORKER_ARGS:-}"

mark=${PBT_FINISHED_MARK:-}
if [[ -n "$mark" && -e "$mark" ]]; then
  echo "worker-step.sh: node $node: the run is finished ($mark); nothing to do"
  exit 0
fi
echo "worker-step.sh: node $node (host id $host_id) ${devices[*]} -> $PBT_CONNECT"
"${PBT_CMD_ARGV[@]}" worker "$PBT_EXPERIMENT" --connect "$PBT_CONNECT" --checkpoint-root "$PBT_CHECKPOINTS" \
  --host-id "$host_id" "${devices[@]}" "${curve[@]}" "${extra[@]}" &
worker=$!
# SLURM signals every process of the step; pass a SIGTERM on too in case it reaches only this one
trap 'kill -TERM "$worker" 2>/dev/null || true' TERM INT
# Workers leave by themselves when the controller says `done`. One that started after the
# controller ended would wait --controller-timeout for nobody: the finished-run mark (pbt.sbatch
# leaves it) ends it, exit 0, after a short grace for a `done` in flight.
while kill -0 "$worker" 2>/dev/null; do
  if [[ -n "$mark" && -e "$mark" ]]; then
    for _ in 1 2 3 4 5; do
      kill -0 "$worker" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$worker" 2>/dev/null; then
      echo "worker-step.sh: node $node: the run is finished ($mark); stopping the workers still waiting"
      kill -TERM "$worker" 2>/dev/null || true
      wait "$worker" || true
      exit 0
    fi
    break
  fi
  sleep 2 &
  wait $! || true
done
rc=0
wait "$worker" || rc=$?
exit "$rc"
