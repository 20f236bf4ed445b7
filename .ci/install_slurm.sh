#!/usr/bin/env bash
# Install the Debian packages for a single-node SLURM test cluster (see tests/test_slurm.py).
# Idempotent: does nothing when the daemons and client tools are already on PATH.
# Needs root (CI runs as root; there is no systemd, the test starts the daemons itself).
set -euo pipefail

need=(slurmctld slurmd slurmstepd sinfo sbatch srun squeue scontrol scancel munged munge unmunge)
missing=0
for exe in "${need[@]}"; do
    command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$exe" >/dev/null 2>&1 || missing=1
done
if [[ $missing -eq 0 ]]; then
    echo "install_slurm: slurm and munge already installed"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "install_slurm: error: must run as root to apt-get install slurm/munge" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps dpkg from trying to start services (no systemd/init here).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
echo "install_slurm: installed $(slurmctld -V 2>/dev/null || /usr/sbin/slurmctld -V)"
