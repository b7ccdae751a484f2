#!/usr/bin/env bash
# Bring up a one-machine SLURM (munged, MariaDB, slurmdbd, slurmctld, two slurmd) for the tests.
#
# Why a real SLURM: sbatch/srun/sacct/scontrol semantics (requeue, SLURM_* variables, accounting
# that submitit polls) are what the launch code must get right, and a mock would not catch them.
# Everything (configs, state, logs, pid files, the database) lives under one folder so that
# stop.sh can end exactly what this script started and the logs survive for post-mortems.
#
# Usage: slurm/local/start.sh            (idempotent: a second call with everything up does nothing)
# Env:   EMOTRAIN_SLURM_DIR   folder for everything      [/tmp/emotrain-slurm]
#        EMOTRAIN_SLURM_PORT  base port: ctld=P, dbd=P+2, node1=P+4, node2=P+5, srun P+10..P+60  [6817]
#        EMOTRAIN_SLURM_TIMEOUT  seconds to wait for each daemon and for idle nodes  [60]
# Prints the SLURM_CONF to export and writes $EMOTRAIN_SLURM_DIR/env.sh to source.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${EMOTRAIN_SLURM_DIR:-/tmp/emotrain-slurm}"
PORT="${EMOTRAIN_SLURM_PORT:-6817}"
TIMEOUT="${EMOTRAIN_SLURM_TIMEOUT:-60}"
NODES=(node1 node2)
MUNGE_SOCKET=/run/munge/munge.socket.2  # slurm's compiled-in default; slurmdbd only finds munged there
export SLURM_CONF="$DIR/etc/slurm.conf"
export MYSQL_UNIX_PORT="$DIR/run/mysqld.sock"
STARTED=0

say() { echo "emotrain-slurm: $*" >&2; }

die() {  # die MESSAGE [LOGFILE...]: the message, then the tail of each log that exists
    say "ERROR: $1"
    shift
    local log
    for log in "$@"; do
        [[ -f "$log" ]] || continue
        echo "---- last lines of $log ----" >&2
        tail -n 25 "$log" >&2
    done
    exit 1
}

alive() {  # alive COMM PIDFILE: true when the pid file names a live (not zombie) process called COMM
    local pid state
    [[ -s "$2" ]] || return 1
    pid="$(cat "$2")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    state="$(ps -o stat= -p "$pid" 2>/dev/null)" || return 1
    [[ "$state" != Z* ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$1" ]]
}

wait_for() {  # wait_for WHAT LOGFILE COMMAND...: poll COMMAND until it succeeds or TIMEOUT passes
    local what="$1" log="$2" deadline=$((SECONDS + TIMEOUT))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what not ready after ${TIMEOUT}s" "$log"
        sleep 0.2
    done
}

ensure_packages() {
    local missing=0 cmd
    for cmd in munged slurmctld slurmd slurmdbd sbatch srun sacct sacctmgr mariadbd mariadb-install-db; do
        command -v "$cmd" >/dev/null 2>&1 || missing=1
    done
    ((missing)) || return 0
    say "installing slurm-wlm, slurmdbd, munge, mariadb-server (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/log/apt.log" 2>&1 || die "apt-get update failed" "$DIR/log/apt.log"
    apt-get install -y -q --no-install-recommends slurm-wlm slurmdbd munge mariadb-server \
        >>"$DIR/log/apt.log" 2>&1 || die "apt-get install failed" "$DIR/log/apt.log"
}

render() {  # render TEMPLATE OUTPUT: fill the @VARS@ of a template in this folder
    sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$(hostname -s)|g" \
        -e "s|@CTLD_PORT@|$PORT|g" -e "s|@DBD_PORT@|$((PORT + 2))|g" \
        -e "s|@NODE1_PORT@|$((PORT + 4))|g" -e "s|@NODE2_PORT@|$((PORT + 5))|g" \
        -e "s|@SRUN_PORTS@|$((PORT + 10))-$((PORT + 60))|g" \
        "$HERE/$1" >"$2.tmp"
    chmod 600 "$2.tmp"
    mv "$2.tmp" "$2"
}

port_free() {  # port_free NAME PORT: die when something already listens there (another cluster?)
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
        die "$1: port $2 is already in use, not by a daemon of $DIR (another cluster? set EMOTRAIN_SLURM_PORT)"
    fi
}

munge_works() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }

start_munged() {
    if munge_works >/dev/null 2>&1; then
        alive munged "$DIR/run/munged.pid" ||
            say "munged: using the one already on $MUNGE_SOCKET (not ours, stop.sh leaves it)"
        return 0
    fi
    if [[ ! -s "$DIR/munge/munge.key" ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 600 "$DIR/munge/munge.key"
    fi
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    chmod 755 "$(dirname "$MUNGE_SOCKET")"  # clients must reach the socket inside it
    munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" ||
        die "munged did not start" "$DIR/log/munged.log"
    wait_for munged "$DIR/log/munged.log" munge_works
    STARTED=$((STARTED + 1))
}

mariadb_works() { mariadb-admin --no-defaults --socket="$MYSQL_UNIX_PORT" -u root ping; }

start_mariadb() {
    if alive mariadbd "$DIR/run/mariadb.pid"; then return 0; fi
    if [[ ! -d "$DIR/mysql/mysql" ]]; then
        mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed" "$DIR/log/mariadb-install.log"
    fi
    # No TCP at all: slurmdbd talks to it over the unix socket only.
    setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$MYSQL_UNIX_PORT" \
        --pid-file="$DIR/run/mariadb.pid" --log-error="$DIR/log/mariadb.log" --skip-networking \
        --skip-name-resolve --innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for mariadb "$DIR/log/mariadb.log" mariadb_works
    STARTED=$((STARTED + 1))
}

dbd_works() { sacctmgr -n -P list cluster format=cluster; }

start_slurmdbd() {
    if ! alive slurmdbd "$DIR/run/slurmdbd.pid"; then
        port_free slurmdbd $((PORT + 2))
        slurmdbd || die "slurmdbd did not start" "$DIR/log/slurmdbd.log"
        wait_for slurmdbd "$DIR/log/slurmdbd.log" dbd_works
        STARTED=$((STARTED + 1))
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx emotrain; then
        sacctmgr -i add cluster emotrain >/dev/null || die "could not register the cluster" "$DIR/log/slurmdbd.log"
    fi
}

start_slurmctld() {
    if alive slurmctld "$DIR/run/slurmctld.pid"; then return 0; fi
    port_free slurmctld "$PORT"
    slurmctld || die "slurmctld did not start" "$DIR/log/slurmctld.log"
    wait_for slurmctld "$DIR/log/slurmctld.log" scontrol ping
    STARTED=$((STARTED + 1))
}

start_slurmd() {  # start_slurmd NODENAME PORT: one emulated node
    if alive slurmd "$DIR/run/slurmd-$1.pid"; then return 0; fi
    port_free "slurmd $1" "$2"
    slurmd -N "$1" || die "slurmd $1 did not start" "$DIR/log/slurmd-$1.log"
    STARTED=$((STARTED + 1))
}

nodes_idle() {
    local idle
    idle="$(sinfo -h -N -p debug -t idle -o '%N' | sort -u | wc -l)"
    ((idle == ${#NODES[@]}))
}

main() {
    mkdir -p "$DIR"/{etc,log,run,munge,mysql,state/ctld}
    chmod 700 "$DIR/munge"
    ensure_packages
    render slurm.conf.in "$DIR/etc/slurm.conf"
    render slurmdbd.conf.in "$DIR/etc/slurmdbd.conf"
    : >"$DIR/etc/plugstack.conf"
    local node i
    for node in "${NODES[@]}"; do mkdir -p "$DIR/state/$node"; done

    start_munged
    start_mariadb
    start_slurmdbd
    start_slurmctld
    for i in "${!NODES[@]}"; do start_slurmd "${NODES[$i]}" $((PORT + 4 + i)); done
    local logs=("$DIR/log/slurmctld.log")
    for node in "${NODES[@]}"; do logs+=("$DIR/log/slurmd-$node.log"); done
    local deadline=$((SECONDS + TIMEOUT))
    until nodes_idle 2>/dev/null; do
        ((SECONDS < deadline)) || { sinfo -N >&2 || true; die "nodes not idle after ${TIMEOUT}s" "${logs[@]}"; }
        sleep 0.2
    done

    printf 'export SLURM_CONF=%q\nexport EMOTRAIN_SLURM_DIR=%q\n' "$SLURM_CONF" "$DIR" >"$DIR/env.sh"
    if ((STARTED == 0)); then
        say "already up, nothing to do ($DIR)"
    else
        say "up: ${#NODES[@]} nodes idle in partition debug, $STARTED daemons started ($DIR)"
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

main "$@"
