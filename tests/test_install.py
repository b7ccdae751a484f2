"""The project as a new user gets it: ``pip install .`` (no extras) into a fresh venv, then the
commands from folders that are not the checkout.

A reduced demo runs in an empty temporary folder and must leave everything there; ``evaluate``
of one of its runs then runs from a third folder, reading the run's saved config only. The
install takes about 1.5 min here (the wheels come from the local package cache), the demo 2-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NOISE

REPO = Path(__file__).resolve().parents[1]
MODELS = ("audio_text", "video_text")
# Small enough to be quick, large enough that every split gets turns and every rank shards.
REDUCED = ["corpus.conversations=80", "pack.max_per_shard=4", "fusion=fusion/quick",
           'train_overrides=["train.total_samples=160", "train.checkpoint_every_steps=10", "train.eval_every_steps=10"]']


def clean_env() -> dict[str, str]:
    """No launcher, cluster or Python-path variables: the venv alone decides what is imported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "TORCHELASTIC_", "SUBMITIT_", "PYTHON", "VIRTUAL_ENV"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(REPO)]
    proc = subprocess.run(pip, env=clean_env(), cwd=tmp_path_factory.mktemp("pip"), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.mark.slow
def test_plain_install_runs_the_demo_outside_the_checkout_and_evaluate_from_a_third_folder(venv, tmp_path):
    emotrain = str(venv / "bin" / "emotrain")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import emotrain; print(emotrain.__file__)"],
                           env=clean_env(), cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert not Path(where).resolve().is_relative_to(REPO), where  # the installed copy, not the checkout

    work = tmp_path / "empty"
    work.mkdir()
    cmd = [emotrain, "demo", *[arg for item in REDUCED for arg in ("--set", item)]]
    demo = subprocess.run(cmd, env=clean_env(), cwd=work, capture_output=True, text=True, timeout=1200)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = work / "runs" / "demo"
    summary = json.loads((out / "fusion" / "fusion.json").read_text())
    table = demo.stdout[demo.stdout.index("Results on the synthetic test split"):]
    for name in summary["test"]:
        assert name in table
    for model in MODELS:
        assert json.loads((out / "runs" / model / "status.json").read_text())["status"] == "completed"
        assert (out / "runs" / model / "eval" / "test" / "report.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]  # nothing written beside its outputs
    console = demo.stdout + demo.stderr
    for noise in NOISE:
        assert noise not in console, noise

    third = tmp_path / "third"
    third.mkdir()
    run_dir = out / "runs" / "audio_text"
    (run_dir / "predictions" / "val.npz").unlink()
    evaluated = subprocess.run([emotrain, "evaluate", str(run_dir), "--split", "val", "--no-progress"],
                               env=clean_env(), cwd=third, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert "audio_text val: accuracy" in evaluated.stdout
    assert (run_dir / "predictions" / "val.npz").is_file() and not any(third.iterdir())
