#!/usr/bin/env bash
# Stop the one-machine SLURM that slurm/local/start.sh brought up.
#
# Ends only the daemons start.sh started, found by their pid files under the folder (a munged
# that was already running before start.sh has no pid file there and is left alone). The folder
# stays for post-mortem logs unless --purge is given.
#
# Usage: slurm/local/stop.sh [--purge]
# Env:   EMOTRAIN_SLURM_DIR   [/tmp/emotrain-slurm]
set -euo pipefail

DIR="${EMOTRAIN_SLURM_DIR:-/tmp/emotrain-slurm}"
PURGE=0
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

say() { echo "emotrain-slurm: $*" >&2; }

running() {  # running PID: alive and not a zombie (PID 1 here may reap late)
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ "$state" != Z* ]]
}

stop_daemons() {  # stop_daemons COMM:PIDFILE...: TERM them together, wait up to 10 s, then KILL
    local item comm pidfile pid i
    local -a pids=() names=()
    for item in "$@"; do
        comm="${item%%:*}" pidfile="${item#*:}"
        [[ -s "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        rm -f "$pidfile"
        [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" || continue
        [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || continue  # a reused pid: not ours
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid") names+=("$comm")
    done
    for i in "${!pids[@]}"; do
        for ((t = 0; t < 50; t++)); do
            running "${pids[$i]}" || break
            sleep 0.1
        done
        if running "${pids[$i]}"; then
            say "${names[$i]} (${pids[$i]}) ignored TERM, killing it"
            kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
        say "stopped ${names[$i]} (${pids[$i]})"
    done
}

cancel_jobs() {  # so that no job step outlives its slurmd
    local conf="$DIR/etc/slurm.conf" jobs
    [[ -f "$conf" ]] && SLURM_CONF="$conf" timeout 10 scontrol ping >/dev/null 2>&1 || return 0
    jobs="$(SLURM_CONF="$conf" timeout 10 squeue -h -o %i 2>/dev/null || true)"
    [[ -n "$jobs" ]] || return 0
    # shellcheck disable=SC2086  # one id per word
    SLURM_CONF="$conf" scancel $jobs 2>/dev/null || true
    sleep 1
}

if [[ -d "$DIR" ]]; then
    cancel_jobs
    run="$DIR/run"
    nodes=()
    for pidfile in "$run"/slurmd-*.pid; do
        [[ -e "$pidfile" ]] && nodes+=("slurmd:$pidfile")
    done
    # Order matters: slurmctld flushes to slurmdbd, which writes to MariaDB; all need munged.
    stop_daemons "${nodes[@]}" "slurmctld:$run/slurmctld.pid"
    stop_daemons "slurmdbd:$run/slurmdbd.pid"
    stop_daemons "mariadbd:$run/mariadb.pid"
    stop_daemons "munged:$run/munged.pid"
fi

if ((PURGE)); then
    rm -rf "$DIR"
    say "purged $DIR"
else
    say "stopped; logs kept in $DIR/log"
fi
