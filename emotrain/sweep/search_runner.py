"""``emotrain sweep run FILE`` for a sweep file with ``search:``: the study's trials, then the confirmation.

Locally the trials run one after another in this process's loop (each trial's training and evaluation
on this machine's ranks, as every sweep point); on SLURM (:mod:`emotrain.sweep.search_array`) every
array task runs the same loop. Re-running continues the study up to ``n_trials``; a finished trial is
never run again, an interrupted one resumes from its checkpoint.

Confirmation over seeds: the ``confirm.top_k`` best completed trials (by their val objective) become the
settings of an ordinary sweep, ``SWEEP/confirm.yaml``, over the trials' seed and ``confirm.seeds``; its
points are the trials' own folders (``points/trial-NNNN/seed<S>``), so each trial's first seed is reused,
and the existing sweep machinery (local or job array) runs the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from emotrain.recipes import workflow
from emotrain.errors import UserError
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.runner import say
from emotrain.sweep.spec import NamedSetting, SweepConfig
from emotrain.sweep.study import WAIT, Lease, claim_next, kept_lease, open_study, trial_dir, trial_name
from emotrain.sweep.steps import local_steps
from emotrain.sweep.trials import record_end, timed_trial

CONFIRM_FILE = "confirm.yaml"
SELECTABLE = ("accuracy", "macro_f1", "weighted_f1")  # what the sweep summary can choose by


@dataclass
class SearchOutcome:
    ran: dict[int, str] = field(default_factory=dict)  # trial number -> how it ended in this run
    interrupted: bool = False


def run_search_local(cfg: SweepConfig, sweep: SweepDir) -> SearchOutcome:
    """Trials until the study holds ``n_trials`` finished ones (waiting for other workers' running trials)."""
    assert cfg.search is not None
    sweep.write_config(cfg)
    study = open_study(cfg, sweep)
    nproc = workflow.local_ranks(cfg.processes)
    steps = local_steps(nproc)
    me, outcome = Lease.mine(), SearchOutcome()
    while True:
        claim = claim_next(study, cfg, sweep, me)
        if claim is None:
            break
        if claim == WAIT:
            time.sleep(min(5.0, cfg.search.lease_s / 4))
            continue
        pdir = trial_dir(cfg, sweep, claim.number, claim.params)
        say(f"{trial_name(claim.number)}{' (resumed)' if claim.resumed else ''}: {claim.params} -> {pdir.root}")
        with kept_lease(pdir, me, cfg.search.lease_s):
            end, wall = timed_trial(cfg, sweep, claim, steps)
            if end is not None:
                record_end(study, cfg, sweep, claim, end, wall)
        if end is None:  # its training stopped on a signal (checkpointed): the next run resumes the trial
            say(f"{trial_name(claim.number)}: interrupted; run the same command again to resume it")
            outcome.interrupted = True
            break
        detail = {"completed": f"val {cfg.search.objective.metric} {end.value:.4f}" if end.value is not None else "",
                  "pruned": f"at step {end.step}", "failed": end.error or ""}[end.state]
        say(f"{trial_name(claim.number)}: {end.state} {detail} ({wall:.0f} s)")
        outcome.ran[claim.number] = end.state
    return outcome


def confirm_config(cfg: SweepConfig, study) -> SweepConfig | None:
    """The confirmation sweep: the best ``top_k`` completed trials (on val) over the trial seed and
    ``confirm.seeds`` (without ``confirm:``, the best trial on its own seed). None when none completed."""
    from optuna.trial import TrialState

    assert cfg.search is not None
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return None
    done.sort(key=lambda t: t.value, reverse=cfg.search.objective.direction == "maximize")
    top_k = cfg.search.confirm.top_k if cfg.search.confirm else 1
    extra = cfg.search.confirm.seeds if cfg.search.confirm else []
    metric = cfg.search.objective.metric
    return replace(cfg, search=None, grid={},
                   settings=[NamedSetting(trial_name(t.number), dict(t.params)) for t in done[:top_k]],
                   seeds=[cfg.seeds[0], *(s for s in extra if s != cfg.seeds[0])],
                   select_metric=metric if metric in SELECTABLE else cfg.select_metric)


def unfinished(study) -> list[int]:
    """Numbers of the trials still RUNNING (or waiting) in the study."""
    return [t.number for t in study.get_trials(deepcopy=False) if not t.state.is_finished()]


def run_local(cfg: SweepConfig, sweep: SweepDir) -> list[str]:
    """The whole search on this machine: trials, confirmation, report. Returns the confirmation points that
    failed."""
    from emotrain.sweep.runner import run_local as run_sweep_local

    assert cfg.search is not None
    outcome = run_search_local(cfg, sweep)
    if outcome.interrupted:
        raise UserError("search interrupted: run the same command again to continue")
    study = open_study(cfg, sweep)
    counts = {state: sum(1 for s in outcome.ran.values() if s == state) for state in ("completed", "pruned", "failed")}
    say(f"search: {len(outcome.ran)} trial(s) run now ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
        f"the study holds {len(study.trials)} of {cfg.search.n_trials}")
    confirm = confirm_config(cfg, study)
    if confirm is None:
        say("search: no trial completed: nothing to confirm")
        return []
    result = run_sweep_local(confirm, SweepDir(sweep.root, CONFIRM_FILE))
    say(f"confirmation: {len(result.completed)} completed, {len(result.skipped)} skipped (done before), "
        f"{len(result.failed)} failed")
    return result.failed


def confirm_dir(sweep: SweepDir) -> SweepDir:
    return SweepDir(sweep.root, CONFIRM_FILE)
