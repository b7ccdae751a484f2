#!/usr/bin/env bash
# Does emotrain work on this GPU, and how fast? One script, run from a checkout as it is:
#
#   benchmarks/gpu_check.sh REPORT_DIR [--wheels WHEEL_DIR] [--python PYTHON]
#
# 1. install (only with --wheels): emotrain and its dependencies offline from a wheel folder made by
#    benchmarks/prepare_wheels.py (benchmarks/install_offline.sh); torch is the one installed and is
#    never replaced;
# 2. the GPU tests: pytest -m gpu tests/test_gpu.py (full-size models with random weights: ZeRO-2 bf16
#    training with checkpoints, resume, GPU == CPU evaluation, no CPU conv detour, nvJPEG, the RTX 3060
#    configs under a 12 GiB cap);
# 3. benchmarks/gpu_throughput.py --synthetic-batches (turns/s, data-wait share, BERT tokens/s, MFU);
# 4. benchmarks/cores_per_gpu.py (loader CPU per turn: how many cores feed this GPU; nvJPEG's cost).
#
# REPORT_DIR gets report.md and report.json (benchmarks/gpu_report.py), each step's log, and the
# figures the tests record. Sized to finish within 8 minutes on one modern GPU (each step has a time
# limit). Without CUDA the steps run as far as a CPU allows (the GPU tests skip, "needs CUDA"; the
# throughput benchmark runs tiny configs) and the report lists the GPU steps skipped.
set -uo pipefail
usage() { sed -n '2,4p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1; shift
wheels=""; py=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
        --python) py=${2:?--python needs an interpreter}; shift 2 ;;
        *) usage ;;
    esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/figures"
out=$(cd "$out" && pwd)
steps="$out/steps.tsv"
: > "$steps"
cd "$repo"

run_step() {  # name limit_seconds command...: runs, logs to $out/<name>.log, records rc and seconds
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" >&2
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$steps"
    tail -n 3 "$out/$name.log" >&2
    return 0
}

if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $py has no torch: install your CUDA build of torch first (this script never installs torch)" >&2
    exit 2
fi
"$py" -c 'import torch; print(torch.__version__)' > "$out/torch_before.txt"
if [ -n "$wheels" ]; then
    run_step install 600 benchmarks/install_offline.sh "$wheels" "$py"
fi
cuda=$("$py" -c 'import torch; print(int(torch.cuda.is_available()))')
"$py" -c 'import platform, torch
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})")' \
    > "$out/device.txt"
export EMOTRAIN_GPU_REPORT="$out/figures" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [ "$cuda" = 1 ]; then
    export DS_ACCELERATOR=cuda
    run_step gpu_tests 330 "$py" -m pytest -m gpu tests/test_gpu.py -rs -q -p no:cacheprovider --junitxml "$out/gpu_tests.xml"
    run_step throughput 150 "$py" benchmarks/gpu_throughput.py --synthetic-batches --json "$out/throughput.json"
    run_step cores_per_gpu 120 "$py" benchmarks/cores_per_gpu.py --video-size 256 --conversations 12 --warmup 6 \
        --batches 20 --formats 0 --workers 4
else  # the CPU's share: the GPU tests skip (needs CUDA), the throughput benchmark's tiny configs, a short loader run
    export DS_ACCELERATOR=cpu
    run_step gpu_tests 300 "$py" -m pytest -m gpu tests/test_gpu.py -rs -q -p no:cacheprovider --junitxml "$out/gpu_tests.xml"
    run_step throughput 900 "$py" benchmarks/gpu_throughput.py --steps 2 --warmup-steps 1 --conversations 4 \
        --seconds 1.5 --workers 1 --json "$out/throughput.json"
    run_step cores_per_gpu 900 "$py" benchmarks/cores_per_gpu.py --video-size 256 --conversations 4 --warmup 2 \
        --batches 4 --formats 0 --workers 1
fi
"$py" -c 'import torch; print(torch.__version__)' > "$out/torch_after.txt"
"$py" benchmarks/gpu_report.py "$out"
