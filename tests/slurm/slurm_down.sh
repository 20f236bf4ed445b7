#!/usr/bin/env bash
# Stop the daemons tests/slurm/slurm_up.sh started (by recorded PID, nothing else) and
# restore /etc/slurm from the backup it made.   tests/slurm/slurm_down.sh STATE_DIR
set -uo pipefail

state=${1:?usage: slurm_down.sh STATE_DIR}
conf_dir=/etc/slurm
export PATH="$PATH:/usr/sbin:/sbin"
[[ -d $state ]] || exit 0

# Cancel jobs still queued or running on the test cluster (a timed-out or interrupted
# run), and give their processes up to 30 s to end while slurmd can still signal them.
if [[ -s $state/pids ]] && grep -q '^slurmctld ' "$state"/pids && command -v scancel >/dev/null; then
    timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 30); do
        left=$(timeout 5 squeue -h -t PENDING,RUNNING,COMPLETING,CONFIGURING -o %i 2>/dev/null) || break
        [[ -z $left ]] && break
        sleep 1
    done
fi

# Reverse start order: slurmd, slurmctld, munged. Only PIDs whose command line still
# names the daemon are signalled, so a recycled PID is never hit.
if [[ -f $state/pids ]]; then
    tac "$state"/pids | while read -r name pid; do
        [[ -n ${pid:-} ]] || continue
        if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q "$name"; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            if kill -0 "$pid" 2>/dev/null; then
                echo "slurm_down: $name ($pid) ignored SIGTERM; sending SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    done
    : >"$state"/pids
fi

# slurmstepd processes of a still-running job belong to the job, not to a daemon PID;
# they exit once slurmd is gone and their job's processes end.

for f in slurm.conf gres.conf cgroup.conf; do
    if [[ -e $state/backup/$f ]]; then
        cp -p "$state/backup/$f" "$conf_dir/$f" && rm -f "$state/backup/$f"
    elif [[ -e $state/backup/$f.absent ]]; then
        rm -f "$conf_dir/$f" "$state/backup/$f.absent"
    fi
done
if [[ -e $state/munge.key.created ]]; then
    rm -f /etc/munge/munge.key "$state"/munge.key.created
fi
echo "slurm_down: stopped and restored"
