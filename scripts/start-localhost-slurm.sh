#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine from Debian/Ubuntu packages (no systemd needed): partitions
# `local` (default) and `alt`, and one fake GPU (GRES gpu:fake:1 backed by an empty file, not a device) so that
# GPU jobs are scheduled as on a real cluster. No slurmdbd: use `--slurm-status-command squeue` (docs/slurm.md).
# Idempotent: does nothing when this configuration is already up. Needs root.
# Exit status 2: SLURM cannot be installed here (not root, no apt-get, or the install failed); other non-zero
# statuses are real failures.
# Usage: scripts/start-localhost-slurm.sh          (as root)
set -euo pipefail

MARK="# written by cocoracle scripts/start-localhost-slurm.sh"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
die() { echo "start-localhost-slurm: $2" >&2; exit "$1"; }
node_state() { sinfo -h -N -o %T 2>/dev/null | head -n1; }

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
slurm_conf="$MARK
ClusterName=localhost
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MailProg=/bin/true
MinJobAge=3600
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:fake:1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000
PartitionName=alt Nodes=ALL Default=NO MaxTime=INFINITE State=UP DefMemPerCPU=1000"
gres_conf="$MARK
NodeName=$host Name=gpu Type=fake File=/var/spool/slurmd/fake-gpu0"

if [[ -e $CONF && "$(cat "$CONF")" == "$slurm_conf" ]] && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]]; then
    echo "start-localhost-slurm: already up ($(node_state))"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die 2 "must run as root to install and start SLURM"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die 2 "SLURM is not installed and there is no apt-get to install it"
    pkgs=(slurmctld slurmd slurm-client munge)
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/tmp/slurm-apt.log 2>&1 \
        || { apt-get update -q >>/tmp/slurm-apt.log 2>&1 \
             && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>/tmp/slurm-apt.log 2>&1; } \
        || die 2 "apt-get install ${pkgs[*]} failed (log: /tmp/slurm-apt.log)"
fi

if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    die 1 "$CONF exists and was not written by this script; not touching it"
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
echo "$slurm_conf" >"$CONF"
echo "$gres_conf" >"$GRES_CONF"
touch /var/spool/slurmd/fake-gpu0

# munge: Debian's postinst made the key; the daemon runs as the munge user
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge: /run/munge
    runuser -u munge -- munged || die 1 "munged did not start"
fi

# restart this script's daemons (if any) on the config just written, from a clean state
for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
done
slurmctld -c -i || die 1 "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
slurmd || die 1 "slurmd did not start (see /var/log/slurm/slurmd.log)"

for i in $(seq 120); do
    for d in slurmctld slurmd; do
        pid=$(cat "/run/slurm/$d.pid" 2>/dev/null || true)
        if { [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; } || { [[ -z $pid ]] && ((i > 10)); }; then
            die 1 "$d exited: $(grep -E 'fatal|error' "/var/log/slurm/$d.log" | tail -n1)"
        fi
    done
    state=$(node_state || true)
    [[ $state =~ inval|drain ]] && die 1 "node $host is $state: $(scontrol show node "$host" | grep -o 'Reason=.*')"
    if [[ $state =~ ^(idle|mixed|allocated) ]]; then
        echo "start-localhost-slurm: node $host $state ($cpus CPUs, $mem_mb MB, 1 fake GPU), partitions local*, alt"
        exit 0
    fi
    sleep 0.5
done
die 1 "node $host not idle after 60 s (state '${state:-none}'; see /var/log/slurm/)"
