#!/usr/bin/env bash
# Run a command with the local SLURM up (what `make test` does for the `slurm` tests).
#
# Starts the cluster of start.sh when it is not answering (installing the packages if needed) and
# stops it afterwards; a cluster that was already up is used and left running.
#
# Usage: slurm/local/with_cluster.sh COMMAND [ARG...]      (exit status: the command's)
# Env:   EMOTRAIN_SLURM_DIR   [/tmp/emotrain-slurm]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${EMOTRAIN_SLURM_DIR:-/tmp/emotrain-slurm}"
(($#)) || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }

if SLURM_CONF="$DIR/etc/slurm.conf" scontrol ping 2>/dev/null | grep -q UP; then
    echo "emotrain-slurm: using the cluster already up in $DIR" >&2
else
    trap '"$HERE/stop.sh" || true' EXIT
    "$HERE/start.sh"
fi
# shellcheck disable=SC1091
. "$DIR/env.sh"
"$@"
