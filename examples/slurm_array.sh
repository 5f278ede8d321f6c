#!/usr/bin/env bash
# One egoqa node per Slurm array task, all pulling from one PostgreSQL queue.
#
#   export EGOQA_DB=postgresql+psycopg://egoqa@dbhost:5432/egoqa   # password in ~/.pgpass
#   egoqa enqueue --annotations nlq_val.json --videos /data/ego4d/v2/clips --config coarse
#   sbatch --array=0-3 examples/slurm_array.sh
#
# Tasks do not split the work: each claims batches from the same queue until nothing is left,
# so more tasks can be submitted, cancelled or resubmitted at any time (see docs/multinode.md).
#
#SBATCH --job-name=egoqa
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --output=egoqa-%A_%a.log
#
# --signal=B:TERM@120: SIGTERM two minutes before the time limit, so workers release the jobs
# they hold and other tasks take them over at once (pre-emption and scancel send SIGTERM too).
# Jobs of a task that dies without it come back when their leases expire (--lease below).

set -euo pipefail

: "${EGOQA_DB:?set EGOQA_DB to the PostgreSQL URL, e.g. postgresql+psycopg://egoqa@dbhost:5432/egoqa}"
export EGOQA_DB

# The environment egoqa is installed in (pip install 'egoqa[postgres]'), if not already active.
if [[ -n "${EGOQA_VENV:-}" ]]; then
  # shellcheck disable=SC1091
  source "${EGOQA_VENV}/bin/activate"
fi

# Compute nodes often have no internet access: load the model from the shared HF cache.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

# The GPUs Slurm gave this task; one worker per GPU group.
GPUS="${CUDA_VISIBLE_DEVICES:?no GPUs allocated: check --gres}"
GPUS_PER_WORKER="${GPUS_PER_WORKER:-1}"   # 4 for a 72B model
LEASE="${EGOQA_LEASE:-600}"               # seconds before a dead node's jobs are taken over

echo "egoqa: array task ${SLURM_ARRAY_TASK_ID:-0} on $(hostname), GPUs ${GPUS}" >&2

# exec: the supervisor itself receives Slurm's SIGTERM, and stops its workers cleanly.
exec egoqa work \
  --gpus "${GPUS}" \
  --gpus-per-worker "${GPUS_PER_WORKER}" \
  --lease "${LEASE}" \
  --until-done
