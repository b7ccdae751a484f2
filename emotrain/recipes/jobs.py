"""The jobs a cluster runs, as functions with typed arguments, and the submitit job that trains.

submitit pickles the callable and the job process must import its class, so the job lives in the
package (a class defined in a script's ``__main__`` would not unpickle). A job calls the recipe
directly (:func:`emotrain.recipes.train.run_training`), never the command line with an argv list.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import submitit

from emotrain.errors import UserError
from emotrain.training.rundir import PREEMPTED, RunDir, RunStatus


@dataclass(frozen=True)
class TrainRequest:
    """One training launch: a run config (a YAML file or a packaged name), its run directory, ``--set`` overrides."""

    config: str
    run_dir: Path
    overrides: list[str] = field(default_factory=list)


def train_in_process(request: TrainRequest) -> int:
    """Train (or resume) on this process's rank, as ``emotrain train`` does; returns the exit code."""
    from emotrain.console import quiet_libraries
    from emotrain.log import setup_logging
    from emotrain.recipes.train import run_training
    from emotrain.training import distributed as dist
    from emotrain.training.run_config import load_run_config

    quiet_libraries()
    setup_logging()
    cfg = load_run_config(request.config, request.overrides)
    return run_training(cfg, request.run_dir, dist.read_env())


def train_or_requeue(request: TrainRequest, requeue: bool = True) -> RunStatus:
    """Train in this process (every task of the step runs it, SLURM numbers the ranks). When the run
    stopped for preemption, its checkpoint is written; with ``requeue`` (under submitit) hand submitit its
    signal back, so its own handler requeues the job (rank 0 does not return; the other ranks return the
    ``preempted`` status). A failed training raises :class:`UserError` (one line)."""
    code = train_in_process(request)
    if code != 0:
        raise UserError(f"training of {request.run_dir} failed (exit {code})")
    status = RunDir(request.run_dir).read_status()
    if status is None:
        raise UserError(f"training of {request.run_dir} exited with 0 but wrote no status.json")
    if status.status == PREEMPTED and requeue:
        signal.raise_signal(signal.SIGUSR2)
    return status


class TrainJob(submitit.helpers.Checkpointable):
    """What each SLURM task runs: one training launch in-process, with the same request on every requeue."""

    def __init__(self, request: TrainRequest) -> None:
        self.request = request

    def __call__(self) -> dict:
        return asdict(train_or_requeue(self.request))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: training resumes from the run directory's checkpoints."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.request))
