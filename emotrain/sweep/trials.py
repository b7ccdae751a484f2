"""One trial of a search, run as a sweep point: train (the pruned-on model with the pruning hook), then,
unless pruned, evaluate on val and test and fuse a pair; what ended it goes to the study and ``point.json``.

The steps themselves are the caller's: subprocesses on this machine (:class:`LocalSteps`, as every local
sweep point) or in-process on every rank of a SLURM array task (:mod:`emotrain.sweep.search_array`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emotrain.errors import UserError
from emotrain.evaluation.report_file import EvalReport
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.names import EVAL_SPLITS, VAL
from emotrain.recipes import workflow
from emotrain.sweep.layout import COMPLETED, FAILED, PRUNED, PointDir, PointStatus, SweepDir
from emotrain.sweep.runner import fuse_point
from emotrain.sweep.spec import SweepConfig, model_overrides
from emotrain.sweep.study import LEASE_FILE, Claim, read_pruned, trial_point
from emotrain.training.hooks import HOOK_ENV


class TrialSteps(Protocol):
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
    """The steps on this machine's ranks (subprocesses), as :func:`emotrain.sweep.runner.run_point` runs them."""

    nproc: int

    def train(self, config: str, run_dir: Path, overrides: list[str], prune: bool) -> bool:
        with hook_env(prune):
            workflow.train(config, run_dir, overrides, self.nproc)
        return True

    def evaluate(self, run_dirs: list[Path]) -> None:
        workflow.evaluate(run_dirs, self.nproc)


class InProcessSteps:
    """A trial's steps in this process (every rank of an array task, or the one local process): no interpreter
    and library start-up per step; each stage rendezvous on a port of its own (see PointJob)."""

    def __init__(self, start_env: dict[str, str], base_port: int, requeue: bool) -> None:
        self.start_env, self.base_port, self.stage = start_env, base_port, 0
        self.requeue = requeue  # under submitit: a preempted training hands its signal back (a requeue)

    def _next_stage(self) -> None:
        from emotrain.sweep.array import _stage_env

        _stage_env(self.start_env, self.base_port, self.stage)
        self.stage += 1

    def train(self, config: str, run_dir: Path, overrides: list[str], prune: bool) -> bool:
        from emotrain.recipes.jobs import TrainRequest, train_in_process
        from emotrain.training.rundir import PREEMPTED, RunDir

        self._next_stage()
        with hook_env(prune):
            code = train_in_process(TrainRequest(config, run_dir, overrides))
        status = RunDir(run_dir).read_status()
        if code != 0 or status is None:
            raise UserError(f"training of {run_dir} failed (exit {code})")
        if status.status == PREEMPTED:
            if self.requeue:  # submitit's handler requeues the task; rank 0 does not return from it
                signal.raise_signal(signal.SIGUSR2)
            return False
        return True

    def evaluate(self, run_dirs: list[Path]) -> None:
        from emotrain.recipes.evaluate import EvalRequest, evaluate_runs

        self._next_stage()
        evaluate_runs(EvalRequest(list(run_dirs), list(EVAL_SPLITS), progress=False))


@dataclass
class TrialEnd:
    state: str  # completed | pruned | failed
    value: float | None = None  # the val objective (pruned: the last value reported)
    step: int | None = None  # pruned: the step its training stopped at
    error: str | None = None


def prune_model(cfg: SweepConfig) -> str | None:
    """The model whose training reports to the pruner (None: no pruning)."""
    assert cfg.search is not None
    if cfg.search.pruner.name == "none":
        return None
    return cfg.search.pruner.model or cfg.models[0]


def objective_value(cfg: SweepConfig, pdir: PointDir) -> float:
    """The point's val objective: of the one model (its eval report), or of the fusion its pair chose on val."""
    assert cfg.search is not None
    metric = cfg.search.objective.metric
    if cfg.pair is None:
        return EvalReport.load(pdir.run(cfg.models[0]).eval_report(VAL)).metric(VAL, metric)
    value = FusionSummary.load(pdir.fusion).chosen_metrics(VAL).get(metric)
    if not isinstance(value, (int, float)):
        raise UserError(f"{pdir.fusion}: the chosen fusion's val metrics hold no number {metric!r}")
    return float(value)


def run_trial(cfg: SweepConfig, sweep: SweepDir, claim: Claim, steps: TrialSteps, is_main: bool = True) -> TrialEnd | None:
    """The trial's point, resumed where its folder stands; None when a training was preempted. Collective
    when ``steps`` are (every rank calls it); the objective is read on rank 0 only."""
    point = trial_point(cfg, claim.number, claim.params)
    pdir = sweep.point(point, cfg.models)
    pruned_on = prune_model(cfg)
    for model in cfg.models:
        if read_pruned(pdir) is not None:  # pruned before (a resumed trial): never trained further
            break
        if not steps.train(cfg.train_config_of(model), pdir.run(model).root, model_overrides(cfg, point, model),
                           prune=model == pruned_on):
            return None
    pruned = read_pruned(pdir)
    if pruned is not None:
        return TrialEnd(PRUNED, float(pruned["value"]), int(pruned["step"]))
    steps.evaluate([pdir.run(model).root for model in cfg.models])
    if not is_main:
        return TrialEnd(COMPLETED)
    fuse_point(cfg, point, pdir)
    return TrialEnd(COMPLETED, objective_value(cfg, pdir))


def record_end(study, cfg: SweepConfig, sweep: SweepDir, claim: Claim, end: TrialEnd, wall_s: float) -> None:
    """Tell the study how the trial ended and write its ``point.json`` (then its lease is no longer needed)."""
    from optuna.trial import TrialState

    pdir = sweep.point(trial_point(cfg, claim.number, claim.params), cfg.models)
    if end.state == COMPLETED:
        study.tell(claim.number, end.value, skip_if_finished=True)
    elif end.state == PRUNED:
        study.tell(claim.number, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        study.tell(claim.number, state=TrialState.FAIL, skip_if_finished=True)
    pdir.write_status(PointStatus(end.state, wall_s, end.error, step=end.step))
    (pdir.root / LEASE_FILE).unlink(missing_ok=True)


def timed_trial(cfg: SweepConfig, sweep: SweepDir, claim: Claim, steps: TrialSteps,
                is_main: bool = True) -> tuple[TrialEnd | None, float]:
    """:func:`run_trial` with a failure turned into a ``failed`` end (one line), and its wall time."""
    from emotrain.config import ConfigError

    start = time.perf_counter()
    try:
        end = run_trial(cfg, sweep, claim, steps, is_main)
    except ConfigError as err:  # UserError included: a failed step, a bad value
        end = TrialEnd(FAILED, error=str(err))
    return end, time.perf_counter() - start
