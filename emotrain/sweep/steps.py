"""How a sweep point's or a search trial's steps run: train each model, then evaluate the runs on val and test.

Two ways, one interface: :class:`LocalSteps` launches each step on this machine's ranks (subprocesses, torchrun
for several), :class:`InProcessSteps` runs it in the calling process (every rank of a SLURM array task, or the
one process of a one-rank local sweep or search: a small point on a CPU is mostly interpreter and library
start-up, paid once instead of once per step). :func:`local_steps` picks for a local run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emotrain.names import EVAL_SPLITS
from emotrain.recipes import workflow
from emotrain.training.distributed import free_port
from emotrain.training.hooks import HOOK_ENV


def stage_env(start: dict[str, str], base_port: int, stage: int) -> None:
    """Each in-process stage of a point (a training, the evaluation) starts from the environment submitit
    gave the task (a stage exports RANK, WORLD_SIZE, ... that would make the next one look torchrun-launched)
    and rendezvous on a port of its own, the same on every rank: the store rank 0 served for the previous
    stage may still hold its port."""
    os.environ.clear()
    os.environ.update(start)
    os.environ["MASTER_PORT"] = str(1024 + (base_port - 1024 + stage) % (65536 - 1024))


class PointSteps(Protocol):
    def train(self, config: str, run_dir: Path, overrides: list[str], prune: bool) -> bool:
        """Train (or resume) one run, with the pruning hook when ``prune``; False when preempted."""

    def evaluate(self, run_dirs: list[Path]) -> None:
        """Every run on val and test."""


@contextmanager
def hook_env(prune: bool) -> Iterator[None]:
    """``EMOTRAIN_VALIDATION_HOOK`` set for the body when ``prune`` (a training launched inside inherits it)."""
    from emotrain.sweep.pruning import HOOK_SPEC

    saved = os.environ.pop(HOOK_ENV, None)
    if prune:
        os.environ[HOOK_ENV] = HOOK_SPEC
    try:
        yield
    finally:
        os.environ.pop(HOOK_ENV, None)
        if saved is not None:
            os.environ[HOOK_ENV] = saved


@dataclass
class LocalSteps:
    """The steps on this machine's ranks, each a subprocess (torchrun for several ranks)."""

    nproc: int

    def train(self, config: str, run_dir: Path, overrides: list[str], prune: bool) -> bool:
        with hook_env(prune):
            workflow.train(config, run_dir, overrides, self.nproc)
        return True

    def evaluate(self, run_dirs: list[Path]) -> None:
        workflow.evaluate(run_dirs, self.nproc)


class InProcessSteps:
    """The steps in this process (every rank of an array task, or the one local process): no interpreter and
    library start-up per step; each stage rendezvous on a port of its own (see :func:`stage_env`)."""

    def __init__(self, start_env: dict[str, str], base_port: int, requeue: bool) -> None:
        self.start_env, self.base_port, self.stage = start_env, base_port, 0
        self.requeue = requeue  # under submitit: a preempted training hands its signal back (a requeue)

    def _next_stage(self) -> None:
        stage_env(self.start_env, self.base_port, self.stage)
        self.stage += 1

    def train(self, config: str, run_dir: Path, overrides: list[str], prune: bool) -> bool:
        from emotrain.recipes.jobs import TrainRequest, train_or_requeue
        from emotrain.training.rundir import PREEMPTED

        self._next_stage()
        with hook_env(prune):
            status = train_or_requeue(TrainRequest(config, run_dir, overrides), requeue=self.requeue)
        return status.status != PREEMPTED

    def evaluate(self, run_dirs: list[Path]) -> None:
        from emotrain.recipes.evaluate import EvalRequest, evaluate_runs

        self._next_stage()
        evaluate_runs(EvalRequest(list(run_dirs), list(EVAL_SPLITS), progress=False))


def local_steps(nproc: int) -> PointSteps:
    """The steps of a local sweep or search: in this process for one rank, else one launch per step."""
    return InProcessSteps(dict(os.environ), free_port(), requeue=False) if nproc == 1 else LocalSteps(nproc)
