#!/usr/bin/env bash
# A throwaway one-node Slurm cluster for the test suite (SlurmTests), all of its state in one folder:
#
#   Tests/slurm/one-node-cluster.sh start DIR [WATCH_PID]   # writes DIR/slurm.conf, starts slurmctld and slurmd
#   SLURM_CONF=DIR/slurm.conf sbatch ...
#   Tests/slurm/one-node-cluster.sh stop DIR                # cancels every job, stops the daemons
#
# Debian's slurm-wlm run as root without munge: auth/none and cred/none, no cgroups (proctrack/linuxproc, task/none).
# The node offers the CPUs and memory `slurmd -C` finds, no more, so jobs share the machine as they would a real node.
# Ports are picked free, so two runs on one machine do not meet. A watchdog stops the cluster when WATCH_PID (the
# test) exits, even killed, or after LIFETIME seconds at most, so no daemon outlives the test that started it.
set -euo pipefail

LIFETIME=${LIFETIME:-900}

usage() { echo "usage: $0 start DIR [WATCH_PID] | stop DIR" >&2; exit 2; }
(( $# >= 2 )) || usage
ACTION=$1
DIR=$(realpath -m "$2")
SELF=$(realpath "$0")

# A port nothing listens on, from a range away from Slurm's defaults (6817, 6818) and the ephemeral range.
free_port() {
    local port
    for _ in $(seq 100); do
        port=$(( 20000 + RANDOM % 10000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
    echo "no free port found" >&2; exit 1
}

stop() {
    [[ -f "$DIR/slurm.conf" ]] || return 0
    # Cancel first so that slurmd ends the job steps; bounded, since a stuck controller must not stop the teardown.
    SLURM_CONF="$DIR/slurm.conf" timeout 10 scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    local pids=()
    for name in slurmd slurmctld watchdog; do
        if [[ -s "$DIR/$name.pid" ]]; then pids+=("$(cat "$DIR/$name.pid")"); fi
    done
    # Job steps left behind (slurmstepd and the jobs' processes) carry this cluster's SLURM_CONF in their environment.
    for proc in /proc/[0-9]*; do
        if tr '\0' '\n' 2>/dev/null <"$proc/environ" | grep -qxF "SLURM_CONF=$DIR/slurm.conf"; then
            pids+=("${proc#/proc/}")
        fi
    done
    pids=($(printf '%s\n' "${pids[@]}" | grep -vx -e "$$" -e "$PPID" | sort -u || true))
    (( ${#pids[@]} )) || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "${pids[@]}" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

start() {
    command -v slurmctld >/dev/null || { echo "slurmctld is not installed (apt-get install slurm-wlm)" >&2; exit 1; }
    [[ $(id -u) == 0 ]] || { echo "slurmd must run as root here (it starts jobs as their user)" >&2; exit 1; }
    # Close what the caller left open beyond stdin, stdout and stderr: the daemons and the watchdog would inherit it,
    # and a caller that learns of this script's end by such a descriptor closing (Foundation's Process does) waits forever.
    for fd in /proc/self/fd/*; do
        fd=${fd##*/}
        if (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    mkdir -p "$DIR/state" "$DIR/spool"
    local node host
    host=$(hostname -s)
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105", then an UpTime line.
    node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=bottleneck-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    if [[ -n "${3:-}" ]]; then
        # The watchdog: detached from the caller's output, so a caller that reads it to the end is not kept waiting;
        # without SLURM_CONF, which is how stop finds what belongs to this cluster.
        env -u SLURM_CONF nohup setsid bash -c \
            'for _ in $(seq "$3"); do kill -0 "$2" 2>/dev/null || break; sleep 1; done; "$0" stop "$1"' \
            "$SELF" "$DIR" "$3" "$LIFETIME" >/dev/null 2>&1 &
        echo $! >"$DIR/watchdog.pid"
    fi
    export SLURM_CONF="$DIR/slurm.conf"
    # -i: ignore state a previous cluster left (there is none: the folder is new).
    slurmctld -i
    slurmd -N "$host"
    # Ready when the node takes jobs; the daemons need a second or two.
    for _ in $(seq 300); do
        if [[ $(sinfo --noheader --format=%t 2>/dev/null) == idle ]]; then return 0; fi
        sleep 0.1
    done
    echo "the one-node cluster in $DIR did not become ready in 30 s; sinfo says: $(sinfo 2>&1)" >&2
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    stop
    exit 1
}

case $ACTION in
    start) start "$@" ;;
    stop) stop ;;
    *) usage ;;
esac
