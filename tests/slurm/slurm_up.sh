#!/usr/bin/env bash
# Stand up a real single-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   tests/slurm/slurm_up.sh STATE_DIR    # then: tests/slurm/slurm_down.sh STATE_DIR
#
# Needs root and the Debian packages from .ci/install_slurm.sh. There is no systemd: the
# daemons (munged if none is running, slurmctld, slurmd) are started directly and their
# PIDs recorded in STATE_DIR/pids, so slurm_down.sh stops exactly those. slurm.conf and
# gres.conf are written to /etc/slurm (jobs launched by the Snakemake executor plugin run
# with SLURM_* variables cleared, so nested srun/sbatch only find the default path); any
# existing files are backed up in STATE_DIR/backup and restored by slurm_down.sh.
# Env: LARSVAE_SLURM_NGPU (fake GPUs, default 4), LARSVAE_SLURM_TIMEOUT (seconds to wait
# for the node to become idle, default 60).
set -euo pipefail

state=${1:?usage: slurm_up.sh STATE_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ngpu=${LARSVAE_SLURM_NGPU:-4}
timeout_s=${LARSVAE_SLURM_TIMEOUT:-60}
conf_dir=/etc/slurm
export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "slurm_up: error: $*" >&2; exit 1; }
# Once anything is started or /etc/slurm touched, a failure (die or a failing command)
# tears it all down again.
teardown_on_failure() {
    local rc=$?
    if ((rc != 0)) && [[ -n ${state:-} && -f $state/pids ]]; then
        echo "slurm_up: failed; tearing down" >&2
        "$here"/slurm_down.sh "$state" >&2 || true
    fi
}
[[ $(id -u) -eq 0 ]] || die "must run as root (starts slurmctld/slurmd/munged)"
for exe in munged munge slurmctld slurmd sinfo scontrol; do
    command -v "$exe" >/dev/null || die "$exe not found; run .ci/install_slurm.sh"
done

mkdir -p "$state"/ctld "$state"/slurmd "$state"/backup
state=$(cd "$state" && pwd)
: >"$state"/pids
trap teardown_on_failure EXIT

record() { echo "$1 $2" >>"$state"/pids; }  # name pid

# --- config files at the default path (backed up once, restored by slurm_down.sh) ---
mkdir -p "$conf_dir"
for f in slurm.conf gres.conf cgroup.conf; do
    if [[ -e $conf_dir/$f && ! -e $state/backup/$f.absent && ! -e $state/backup/$f ]]; then
        cp -p "$conf_dir/$f" "$state/backup/$f"
    elif [[ ! -e $conf_dir/$f ]]; then
        touch "$state/backup/$f.absent"
    fi
done
# A cgroup.conf from a real install would select cgroup plugins we do not use here.
rm -f "$conf_dir"/cgroup.conf

# `slurmd -C` prints this machine's real topology, e.g.
# NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
hw=$(slurmd -C | head -n 1)
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$hw"; }
node=$(field NodeName)
[[ -n $node ]] || die "could not parse 'slurmd -C' output: $hw"
sed -e "s|@NODENAME@|$node|g" -e "s|@CPUS@|$(field CPUs)|g" -e "s|@BOARDS@|$(field Boards)|g" \
    -e "s|@SOCKETS@|$(field SocketsPerBoard)|g" -e "s|@CORES@|$(field CoresPerSocket)|g" \
    -e "s|@THREADS@|$(field ThreadsPerCore)|g" -e "s|@REALMEM@|$(field RealMemory)|g" \
    -e "s|@NGPU@|$ngpu|g" -e "s|@STATE@|$state|g" \
    -e "s|@CTLD_PORT@|${LARSVAE_SLURMCTLD_PORT:-6817}|g" \
    -e "s|@SLURMD_PORT@|${LARSVAE_SLURMD_PORT:-6818}|g" \
    "$here"/slurm.conf.in >"$conf_dir"/slurm.conf
# Fake GPUs: SLURM wants one device file per GPU; symlinks to /dev/null (a char device)
# stand in for /dev/nvidiaN. With task/none nothing is fenced, only counted and assigned.
for ((i = 0; i < ngpu; i++)); do ln -sfn /dev/null "$state/fakegpu$i"; done
{
    echo "# Fake GPUs for the test cluster (written by tests/slurm/slurm_up.sh)."
    echo "NodeName=$node Name=gpu File=$state/fakegpu[0-$((ngpu - 1))]"
} >"$conf_dir"/gres.conf
cp "$conf_dir"/slurm.conf "$state"/slurm.conf

# --- munge: reuse a running munged, otherwise start one as the munge user ---
# (munge retries a dead socket for a while, hence the timeouts.)
munge_ok() { timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
if munge_ok; then
    echo "slurm_up: using the munged that is already running"
else
    key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --keyfile="$key" --force
        else dd if=/dev/urandom of="$key" bs=1024 count=1 status=none; fi
        echo created >"$state"/munge.key.created
    fi
    chown munge:munge /etc/munge "$key" 2>/dev/null || true
    chmod 0700 /etc/munge; chmod 0400 "$key"
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    # -F keeps munged in the foreground and setpriv execs it, so $! is munged's own PID.
    # (Its pid file goes to /run/munge: the munge user cannot enter a 0700 STATE_DIR.)
    setsid setpriv --reuid=munge --regid=munge --init-groups munged -F \
        --pid-file=/run/munge/munged.pid </dev/null >>"$state"/munged.log 2>&1 &
    record munged $!
    for _ in $(seq 1 50); do
        munge_ok && break
        kill -0 "$!" 2>/dev/null || break
        sleep 0.2
    done
    munge_ok || die "munged did not come up (see $state/munged.log)"
fi

# --- slurmctld and slurmd in the foreground (-D), backgrounded here, PIDs recorded ---
setsid slurmctld -D -c -i </dev/null >>"$state"/slurmctld.out 2>&1 &
record slurmctld $!
for _ in $(seq 1 $((timeout_s * 5))); do
    timeout 5 scontrol ping 2>/dev/null | grep -q UP && break
    sleep 0.2
done
timeout 5 scontrol ping | grep -q UP || die "slurmctld did not answer (see $state/slurmctld.log)"

setsid slurmd -D </dev/null >>"$state"/slurmd.out 2>&1 &
record slurmd $!

deadline=$((SECONDS + timeout_s))
while ((SECONDS < deadline)); do
    st=$(timeout 5 sinfo -h -n "$node" -o %T 2>/dev/null || true)
    [[ $st == idle ]] && break
    sleep 0.5
done
if [[ $st != idle ]]; then
    timeout 5 sinfo -N -l >&2 || true
    die "node $node not idle after ${timeout_s}s (state '$st'; see $state/slurmd.log)"
fi
echo "slurm_up: node $node idle; pids: $(tr '\n' ' ' <"$state"/pids)"
