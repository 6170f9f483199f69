# Shared by pbt.sbatch and workers.sbatch (sourced, not run): settings from the environment,
# with defaults that suit a cluster whose submit folder is on a shared filesystem.
#
#   PBT_EXPERIMENT   the experiment file (or the batch script's first argument)
#   PBT_SHARED       a folder every node sees (default $SLURM_SUBMIT_DIR/pbt-shared)
#   PBT_STORE        the controller's LMDB store (default $PBT_SHARED/store)
#   PBT_CHECKPOINTS  checkpoints (default $PBT_SHARED/checkpoints)
#   PBT_PORT         the controller's port (default 5555)
#   PBT_KEYS         CURVE keys folder: controller.key(_secret), worker.key_secret, authorized/
#                    (unset: no encryption, and pbt.sbatch binds with --insecure)
#   PBT_CMD          how to run pbt-actors (default: pbt-actors on PATH)
#   PBT_FINISHED_MARK  the file pbt.sbatch leaves once the run is finished (default
#                    $PBT_SHARED/run.finished): workers that start later end at once, exit 0
: "${SLURM_JOB_ID:?run this through sbatch}"
PBT_EXPERIMENT=${1:-${PBT_EXPERIMENT:-}}
: "${PBT_EXPERIMENT:?give the experiment file: sbatch $0 EXP.py (or PBT_EXPERIMENT=...)}"
PBT_EXPERIMENT=$(realpath "$PBT_EXPERIMENT")
PBT_SHARED=${PBT_SHARED:-${SLURM_SUBMIT_DIR:-$PWD}/pbt-shared}
PBT_STORE=${PBT_STORE:-$PBT_SHARED/store}
PBT_CHECKPOINTS=${PBT_CHECKPOINTS:-$PBT_SHARED/checkpoints}
PBT_PORT=${PBT_PORT:-5555}
PBT_CMD=${PBT_CMD:-pbt-actors}
PBT_FINISHED_MARK=${PBT_FINISHED_MARK:-$PBT_SHARED/run.finished}
mkdir -p "$PBT_SHARED" "$PBT_CHECKPOINTS"
export PBT_EXPERIMENT PBT_SHARED PBT_STORE PBT_CHECKPOINTS PBT_PORT PBT_CMD PBT_FINISHED_MARK
read -r -a PBT_CMD_ARGV <<< "$PBT_CMD"

# Whether the store says the run is finished (read-only; run it where no controller writes
# the store, or beside it: LMDB readers do not disturb the writer).
pbt_store_finished() {
  [[ -e "$PBT_STORE/data.mdb" ]] || return 1
  "${PBT_CMD_ARGV[@]}" status --store "$PBT_STORE" --json 2>/dev/null | grep -q '"finished": true'
}

PBT_SLURM_DIR=${PBT_SLURM_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
export PBT_SLURM_DIR
