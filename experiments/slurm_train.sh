#!/bin/bash
# Body shared by slurm_1node.sbatch and slurm_2nodes.sbatch: one `stylebridge train` task per GPU.
# srun gives every task SLURM_PROCID (rank), SLURM_NTASKS (world size) and SLURM_LOCALID (GPU index);
# stylebridge takes rank 0's host from the first entry of SLURM_JOB_NODELIST, uses NCCL between GPUs,
# and each task sees all GPUs of its node (no per-task GPU binding) and picks cuda:SLURM_LOCALID.
set -euo pipefail
config=${1:?usage: sbatch experiments/slurm_1node.sbatch experiments/stage1_paper.yaml [--set key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
# The binary built by `make build`, and the virtualenv whose torch it embeds for torch.distributed.
bin=${STYLEBRIDGE_BIN:-$HOME/.cache/stylebridge/target/debug/stylebridge}
export STYLEBRIDGE_VENV=${STYLEBRIDGE_VENV:-$HOME/.cache/stylebridge/venv}
# A port derived from the job id, so that two jobs sharing a node do not collide.
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-4}
# On clusters with several network interfaces NCCL may need e.g. NCCL_SOCKET_IFNAME=ib0 (set it before sbatch).
[[ -x $bin ]] || { echo "error: $bin is not built (run make build, or set STYLEBRIDGE_BIN)" >&2; exit 1; }
echo "job $SLURM_JOB_ID: $SLURM_NTASKS tasks on $SLURM_JOB_NODELIST, rendezvous port $MASTER_PORT"
# --kill-on-bad-exit: one failed task ends the step, so the others never wait for it.
exec srun --kill-on-bad-exit=1 "$bin" train "$config" "$@"
