"""The steps of one trained system, as the demo and every sweep point run them on this machine.

Train each model on ``nproc`` local ranks (``torchrun --standalone`` over ``emotrain train``; one
plain process when ``nproc`` is 1), evaluate the runs on val and test in one launch, and late-fuse
an audio run with a video run. One place, so that a demo run and a sweep point are the same job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from emotrain.errors import UserError
from emotrain.names import EVAL_SPLITS


def local_ranks(cpu_processes: int) -> int:
    """One rank per GPU when there are GPUs, else ``cpu_processes`` CPU ranks."""
    import torch

    return torch.cuda.device_count() or cpu_processes


def child_env(nproc: int) -> dict[str, str]:
    """This environment with the CPU settings a child launch needs (DeepSpeed's CPU accelerator,
    threads shared among the ranks)."""
    import torch

    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def launch(nproc: int, args: list[str]) -> None:
    """``emotrain <args>`` on ``nproc`` local ranks; a failed rank is one line (UserError)."""
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "emotrain.cli", *args]
    else:
        cmd = [sys.executable, "-m", "emotrain.cli", *args]
    proc = subprocess.run(cmd, env=child_env(nproc))
    if proc.returncode != 0:
        raise UserError(f"step failed (exit {proc.returncode}): {' '.join(cmd)}")


def set_args(overrides: list[str]) -> list[str]:
    """``--set`` flags for a list of ``key=value`` overrides."""
    return [arg for item in overrides for arg in ("--set", item)]


def train(config: str, run_dir: Path, overrides: list[str], nproc: int) -> None:
    """Train (or resume, or return at once when finished) one run."""
    launch(nproc, ["train", config, "--run-dir", str(run_dir), *set_args(overrides)])


def evaluate(run_dirs: list[Path], nproc: int) -> None:
    """Every run on val and test in one launch (start-up is a large share of it on a CPU)."""
    launch(nproc, ["evaluate", *(str(run_dir) for run_dir in run_dirs), "--split", *EVAL_SPLITS])


def fuse(fusion_config: str, audio: Path, video: Path, out: Path, overrides: list[str] | None = None) -> str:
    """Calibrate and fuse on val, report on test into ``out`` (with TensorBoard under ``out/tensorboard``);
    returns the markdown table."""
    from emotrain.config import load_config
    from emotrain.fusion.outputs import render_markdown, write_outputs
    from emotrain.fusion.pipeline import FusionConfig, fuse_runs
    from emotrain.fusion.runs import load_run

    config = load_config(FusionConfig, fusion_config, overrides)
    result = fuse_runs(load_run(audio), load_run(video), config)
    write_outputs(result, config, audio, video, out, out / "tensorboard")
    return render_markdown(result, audio, video)
