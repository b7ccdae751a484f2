"""The offline install for compute nodes: a wheel folder (benchmarks/prepare_wheels.py, which needs PyPI) into a
fresh venv that already holds its torch, with the index disabled (benchmarks/install_offline.sh: pip --no-index)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH = "2.13.0"  # a torch other than this venv's, from this machine's local file: the node's "own" torch


def clean_env() -> dict[str, str]:
    """No PYTHONPATH: the venv must find emotrain where the install put it, not in this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_offline_install_from_a_wheel_folder_keeps_the_installed_torch(tmp_path: Path) -> None:
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    prepared = subprocess.run([sys.executable, str(REPO / "benchmarks" / "prepare_wheels.py"), str(wheels)],
                              env=clean_env(), capture_output=True, text=True, timeout=900)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    names = [p.name.lower() for p in wheels.glob("*.whl")]
    assert not any(n.startswith(("torch-", "nvidia_", "triton-")) for n in names), names
    assert any(n.startswith("deepspeed-") and n.endswith("py3-none-any.whl") for n in names), names
    size_mb = sum(p.stat().st_size for p in wheels.glob("*.whl")) / 1e6
    print(f"wheel folder: {len(names)} wheels, {size_mb:.0f} MB")
    assert size_mb < 300, size_mb  # hundreds of MB at most, not the GBs of a CUDA torch

    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", f"torch=={TORCH}"], env=clean_env(), check=True, timeout=900)
    installed = subprocess.run([str(REPO / "benchmarks" / "install_offline.sh"), str(wheels), py], env=clean_env(),
                               capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    assert f"torch {TORCH}" in installed.stdout and "kept" in installed.stdout, installed.stdout[-500:]
    check = subprocess.run([py, "-c", "import torch, emotrain, deepspeed; print(torch.__version__, emotrain.__file__)"],
                           env=clean_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    version, location = check.stdout.split()
    assert version.split("+")[0] == TORCH and location.startswith(str(venv)), check.stdout
    cli = subprocess.run([str(venv / "bin" / "emotrain"), "--help"], env=clean_env(), capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert cli.returncode == 0 and "evaluate" in cli.stdout, cli.stderr[-2000:]
