"""The submitit job that trains: picklable by reference, requeued with its arguments on preemption.

It lives in the package (not in ``launch/submit.py``) because submitit pickles the callable and the
job process must import its class: a class defined in a script's ``__main__`` would not unpickle.
"""

from __future__ import annotations

import signal
from dataclasses import asdict

import submitit

from emotrain.rundir import RunStatus


def train_or_requeue(train_args: list[str]) -> RunStatus:
    """``emotrain train`` in this process (every task of the step runs it, SLURM numbers the ranks). When the
    run stopped for preemption, its checkpoint is written: hand submitit its signal back, so its own handler
    requeues the job (on rank 0; the other ranks return the ``preempted`` status)."""
    from emotrain.cli import main
    from emotrain.rundir import PREEMPTED, RunDir

    code = main(["train", *train_args])
    if code != 0:
        raise RuntimeError(f"training exited with {code}")
    status = RunDir(train_args[train_args.index("--run-dir") + 1]).read_status()
    if status is None:
        raise RuntimeError("training exited with 0 but wrote no status.json")
    if status.status == PREEMPTED:
        signal.raise_signal(signal.SIGUSR2)
    return status


class TrainJob(submitit.helpers.Checkpointable):
    """What each SLURM task runs: ``emotrain train`` in-process, with the same arguments."""

    def __init__(self, train_args: list[str]) -> None:
        self.train_args = train_args

    def __call__(self) -> dict:
        return asdict(train_or_requeue(self.train_args))

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: training resumes from the run directory's checkpoints."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.train_args))
