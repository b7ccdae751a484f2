#!/usr/bin/env bash
# Install emotrain and its dependencies offline, from a wheel folder made by benchmarks/prepare_wheels.py,
# into the Python that already has its (CUDA) torch; torch is never installed, replaced or upgraded.
#
#   benchmarks/install_offline.sh WHEEL_DIR [PYTHON]     (PYTHON: default $PYTHON, else python3)
#
# Fails, leaving a clear line, when the Python has no torch, when pip would need the index (a wheel is
# missing from the folder), or when torch's version is not what it was before.
set -euo pipefail
wheels=${1:?usage: install_offline.sh WHEEL_DIR [PYTHON]}
py=${2:-${PYTHON:-python3}}
[ -d "$wheels" ] || { echo "install_offline: no wheel folder $wheels" >&2; exit 2; }
before=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) || {
    echo "install_offline: $py has no torch: install your CUDA build of torch first (this never installs torch)" >&2; exit 2; }
# emotrain's own wheel by file (a local build may share its version with an installed one), the rest by name.
wheel=$(ls "$wheels"/emotrain-*.whl | tail -n 1)
"$py" -m pip install --no-index --find-links "$wheels" "$wheel" "pytest>=7"
after=$("$py" -c 'import torch; print(torch.__version__)')
if [ "$before" != "$after" ]; then
    echo "install_offline: torch changed from $before to $after: the wheel folder must not hold torch" >&2; exit 3
fi
"$py" -m emotrain.cli --help > /dev/null
echo "install_offline: emotrain installed from $wheels; torch $after kept"
