"""One trial of a search, run as a sweep point: train (the pruned-on model with the pruning hook), then,
unless pruned, evaluate on val and test and fuse a pair; what ended it goes to the study and ``point.json``.

The steps themselves are the caller's (:mod:`emotrain.sweep.steps`): on this machine, or in-process on every
rank of a SLURM array task (:mod:`emotrain.sweep.search_array`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from emotrain.errors import UserError
from emotrain.evaluation.report_file import EvalReport
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.names import VAL
from emotrain.sweep.layout import COMPLETED, FAILED, PRUNED, PointDir, PointStatus, SweepDir
from emotrain.sweep.runner import fuse_point
from emotrain.sweep.spec import SweepConfig, model_overrides
from emotrain.sweep.steps import PointSteps
from emotrain.sweep.study import LEASE_FILE, Claim, read_pruned, trial_point


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


def run_trial(cfg: SweepConfig, sweep: SweepDir, claim: Claim, steps: PointSteps, is_main: bool = True) -> TrialEnd | None:
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


def timed_trial(cfg: SweepConfig, sweep: SweepDir, claim: Claim, steps: PointSteps,
                is_main: bool = True) -> tuple[TrialEnd | None, float]:
    """:func:`run_trial` with a failure turned into a ``failed`` end (one line), and its wall time."""
    from emotrain.config import ConfigError

    start = time.perf_counter()
    try:
        end = run_trial(cfg, sweep, claim, steps, is_main)
    except ConfigError as err:  # UserError included: a failed step, a bad value
        end = TrialEnd(FAILED, error=str(err))
    return end, time.perf_counter() - start
