"""Prepare a wheel folder that installs emotrain offline on a compute node, next to the node's own torch.

Run on a machine with access to PyPI (any OS; it downloads, it does not install):

    python benchmarks/prepare_wheels.py wheels/ --python-version 3.11 --platform manylinux2014_x86_64 --torch 2.5.1

then copy ``wheels/`` to the cluster and, on a compute node whose Python already has its CUDA torch:

    benchmarks/gpu_check.sh REPORT_DIR --wheels wheels/      # or: pip install --no-index --find-links wheels/ 'emotrain[test]'

What goes in (tens of MB, not GB): the emotrain wheel; DeepSpeed as a pure-Python wheel built here with
``DS_BUILD_OPS=0`` (no prebuilt ops: emotrain uses torch's AdamW, and DeepSpeed builds an op on the node
only if asked); every other dependency of ``emotrain[test]`` as binary wheels for the target's Python
version and platform, resolved by pip for that target, and pytest (what the GPU check runs; not the
test extra's scikit-learn and SciPy). What stays out: torch and its CUDA parts (the nvidia-* libraries,
triton): the node's torch is used as it is and never replaced. torchaudio comes in its newest release
(from 2.9 on it does not pin torch); for an older torch, whose torchaudio must be the same release, give
``--torch VERSION`` (``--torch-index URL`` for builds from the PyTorch index, e.g. .../whl/cu121).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch and its CUDA build's own parts: on the node with its torch. (Small pure-Python packages torch also
# needs stay in: another dependency may want a newer one than the node has.)
TORCH_ONLY = {"torch", "torchvision", "triton"}
TORCH_ONLY_PREFIXES = ("nvidia-", "cuda-", "pytorch-triton")
SOURCE_ONLY = {"deepspeed"}  # published as an sdist only: built here into a pure-Python wheel (main)


def _name(text: str) -> str:
    return text.lower().replace("_", "-")


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, env=env)


def _target_args(args: argparse.Namespace) -> list[str]:
    abi = f"cp{args.python_version.replace('.', '')}"
    return ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp", "--abi", abi,
            "--abi", "abi3", "--abi", "none", *[x for p in args.platform for x in ("--platform", p)]]


def requirement(name: str) -> str:
    """emotrain's requirement on ``name`` as setup.cfg states it (``deepspeed>=0.19,<0.20``)."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    return next(line for line in lines if _name(line).startswith(name))


def resolve(args: argparse.Namespace, emotrain_wheel: Path, tmp: Path) -> dict[str, str]:
    """name -> version of every distribution emotrain and pytest need on the target (pip resolves it for the
    target's Python and platform from package metadata, without downloading torch's wheels)."""
    report = tmp / "report.json"
    _pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), "--target", str(tmp / "t"),
         *_target_args(args), "--find-links", str(emotrain_wheel.parent), f"emotrain @ {emotrain_wheel.as_uri()}", "pytest>=7",
         *(["--extra-index-url", args.torch_index] if args.torch_index else []))
    items = json.loads(report.read_text())["install"]
    return {_name(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the wheel folder (created)")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the compute node's Python, e.g. 3.11 (default: this one's)")
    parser.add_argument("--platform", nargs="+", default=["manylinux2014_x86_64", "manylinux_2_17_x86_64",
                                                          "manylinux_2_28_x86_64", "linux_x86_64"],
                        help="the node's wheel platform tags (default: x86_64 Linux)")
    parser.add_argument("--torch", metavar="VERSION", help="the node's torch version: torchaudio of that release")
    parser.add_argument("--torch-index", metavar="URL", help="where that torchaudio comes from (default: PyPI)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        own = tmp / "own"
        _pip("wheel", "--no-deps", "--quiet", "-w", str(own), str(ROOT))
        # DeepSpeed is published as an sdist only and its setup.py imports torch: built here, with this
        # Python's torch and no build isolation (which would fetch torch), without ops: a pure-Python wheel.
        env = {**os.environ, "DS_BUILD_OPS": "0", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
        _pip("wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(own), requirement("deepspeed"), env=env)
        wheel = next(own.glob("emotrain-*.whl"))
        versions = resolve(args, wheel, tmp)
        for built in own.glob("*.whl"):
            (args.out / built.name).write_bytes(built.read_bytes())
        wanted = {n: v for n, v in versions.items() if n not in TORCH_ONLY | SOURCE_ONLY | {"emotrain"}
                  and not n.startswith(TORCH_ONLY_PREFIXES) and not (args.torch and n == "torchaudio")}
        _pip("download", "--no-deps", "--quiet", "-d", str(args.out), *_target_args(args),
             *[f"{n}=={v}" for n, v in sorted(wanted.items())])
        if args.torch:
            _pip("download", "--no-deps", "--quiet", "-d", str(args.out), *_target_args(args),
                 *(["--index-url", args.torch_index] if args.torch_index else []), f"torchaudio=={args.torch}")
    files = sorted(args.out.glob("*.whl"))
    size = sum(f.stat().st_size for f in files)
    left_out = sorted(n for n in versions if n in TORCH_ONLY or n.startswith(TORCH_ONLY_PREFIXES))
    print(f"{len(files)} wheels, {size / 1e6:.0f} MB in {args.out} (for Python {args.python_version}, "
          f"{args.platform[0]}); left to the node's own torch: {', '.join(left_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
