"""The submitit job that trains: picklable by reference, requeued with its arguments on preemption.

It lives in the package (not in ``launch/submit.py``) because submitit pickles the callable and the
job process must import its class: a class defined in a script's ``__main__`` would not unpickle.
"""

from __future__ import annotations

import signal
from dataclasses import asdict

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    """What each SLURM task runs: ``emotrain train`` in-process, with the same arguments."""

    def __init__(self, train_args: list[str]) -> None:
        self.train_args = train_args

    def __call__(self) -> dict:
        from emotrain.cli import main
        from emotrain.rundir import PREEMPTED, RunDir

        code = main(["train", *self.train_args])
        if code != 0:
            raise RuntimeError(f"training exited with {code}")
        status = RunDir(self.train_args[self.train_args.index("--run-dir") + 1]).read_status()
        if status is None:
            raise RuntimeError("training exited with 0 but wrote no status.json")
        if status.status == PREEMPTED:
            # The checkpoint is written; now let submitit's own handler requeue this job.
            signal.raise_signal(signal.SIGUSR2)
        return asdict(status)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same job: training resumes from the run directory's checkpoints."""
        return submitit.helpers.DelayedSubmission(TrainJob(self.train_args))
