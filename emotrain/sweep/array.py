"""A sweep on SLURM: one job array through submitit, one array task per point not yet completed.

SLURM schedules and caps the concurrent tasks (``slurm_array_parallelism``); submitit submits, tracks and
requeues. Each array task is a job of the shape ``launch/submit.py`` gives a training run (one task per
GPU, any number of nodes) and runs the point in-process on every task: train each model (a preempted
training checkpoints and hands submitit its signal back, which requeues the task: the same
preemption and requeue behaviour as ``launch/submit.py``), evaluate on val and test, and on rank 0
fuse a pair and write ``point.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import submitit

from emotrain.training.rundir import PREEMPTED
from emotrain.sweep.layout import COMPLETED, FAILED, RUNNING, PointStatus, SweepDir
from emotrain.sweep.spec import Point, SweepConfig, expand_points
from emotrain.sweep.steps import InProcessSteps


def _find(cfg: SweepConfig, name: str) -> Point:
    return next(point for point in expand_points(cfg) if point.name == name)


class PointJob(submitit.helpers.Checkpointable):
    """What every task of one array task runs: one sweep point, from the sweep folder's own ``sweep.yaml``."""

    def __init__(self, sweep_root: str, point_name: str, config_file: str = "sweep.yaml") -> None:
        self.sweep_root = sweep_root
        self.point_name = point_name
        self.config_file = config_file

    def __call__(self) -> str:
        from emotrain.sweep.runner import run_point
        from emotrain.training import distributed as dist

        start = time.perf_counter()
        sweep = SweepDir(Path(self.sweep_root), self.config_file)
        cfg = sweep.read_config()
        point = _find(cfg, self.point_name)
        pdir = sweep.point(point, cfg.models)
        env = dist.read_env()
        rank = env.rank
        steps = InProcessSteps(dict(os.environ), env.master_port, requeue=True)
        try:
            if not run_point(cfg, point, pdir, steps, is_main=rank == 0):
                return PREEMPTED  # rank 0 never gets here: submitit requeued the task and exited
            if rank == 0:
                before = pdir.read_status()
                pdir.write_status(PointStatus(COMPLETED, time.perf_counter() - start, None,
                                              before.config if before else None, before.data if before else None))
        except Exception as err:
            if rank == 0:
                before = pdir.read_status()
                pdir.write_status(PointStatus(FAILED, time.perf_counter() - start, f"{type(err).__name__}: {err}",
                                              before.config if before else None, before.data if before else None))
            raise
        return COMPLETED

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue the same point: its trainings resume from their checkpoints."""
        return submitit.helpers.DelayedSubmission(PointJob(self.sweep_root, self.point_name, self.config_file))


def submit_array(cfg: SweepConfig, sweep: SweepDir, args: argparse.Namespace, max_parallel: int) -> list[tuple[str, object]]:
    """Submit every point not yet completed as one array (at most ``max_parallel`` running at once);
    returns (point name, submitit job) pairs. Completed points are skipped, as locally."""
    from emotrain.sweep.runner import say
    from emotrain.training.slurm_submit import make_executor

    from emotrain.sweep.plan import plan

    plans = plan(cfg, sweep)  # every point resolves, and none ran under another configuration: else one line now
    sweep.write_config(cfg)
    pending = []
    for point in expand_points(cfg):
        pdir = sweep.point(point, cfg.models)
        if pdir.is_done():
            say(f"{point.name}: completed before, skipped")
            continue
        recorded = plans[point.name]
        pdir.write_status(PointStatus(RUNNING, 0.0, None, recorded["config"], recorded["data"]))
        pending.append(point)
    if not pending:
        return []
    executor = make_executor(args, sweep.submitit_dir, name=f"sweep-{cfg.name}", slurm_array_parallelism=max_parallel)
    with executor.batch():
        jobs = [executor.submit(PointJob(str(sweep.root), point.name, sweep.config_file)) for point in pending]
    for point, job in zip(pending, jobs):
        say(f"{point.name}: array task {job.job_id}")
    return [(point.name, job) for point, job in zip(pending, jobs)]


def wait_for(jobs: list[tuple[str, object]]) -> list[str]:
    """Block until every task ends; returns the names of the points that failed (each reported in one line)."""
    from emotrain.sweep.runner import say

    failed = []
    for name, job in jobs:
        try:
            job.results()  # type: ignore[attr-defined]
            say(f"{name}: {COMPLETED}")
        except Exception as err:  # submitit raises the task's error, or why it did not finish
            failed.append(name)
            say(f"{name}: FAILED: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}")
    return failed
