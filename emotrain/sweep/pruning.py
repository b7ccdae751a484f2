"""The pruning hook of a trial's training: rank 0 reports each periodic validation to the trial, and
stops the run when the study's pruner says so.

The search runs a trial's training with ``EMOTRAIN_VALIDATION_HOOK=emotrain.sweep.pruning:trial_hook``
(see :mod:`emotrain.training.hooks`); the training calls :func:`trial_hook` with its run folder, whose
parent is the trial's point folder with its ``trial.json``. A resumed trial reports again from its
checkpoint's step on (Optuna keeps the first value reported at a step). When the pruner says stop, the
hook writes ``pruned.json`` (step, value) first, so the search records the trial as pruned even if it
dies before telling the study.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from emotrain.training.engine import ValidationHook

HOOK_SPEC = "emotrain.sweep.pruning:trial_hook"


def trial_hook(run_dir: Path) -> ValidationHook | None:
    """The hook for the trial whose point folder holds ``run_dir`` (None: not a trial's run)."""
    import optuna

    from emotrain.sweep.layout import SweepDir
    from emotrain.sweep.study import TRIAL_FILE, open_study, write_pruned

    point_root = Path(run_dir).parent
    try:
        record = json.loads((point_root / TRIAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sweep = SweepDir(Path(record["sweep"]))
    cfg = sweep.read_config()
    assert cfg.search is not None
    study = open_study(cfg, sweep)
    frozen = study.get_trials(deepcopy=False)[record["number"]]
    trial = optuna.trial.Trial(study, frozen._trial_id)
    key = f"val/{cfg.search.objective.metric}"

    def hook(step: int, metrics: Mapping[str, float]) -> bool:
        value = metrics.get(key)
        if value is None or not math.isfinite(value):
            return False
        trial.report(float(value), step)
        if trial.should_prune():
            write_pruned(point_root, step, float(value))
            return True
        return False

    return hook
