"""Which checkpoint is the best so far, and whether training has stopped improving (early stopping).

Every periodic validation reports metrics such as ``val/macro_f1`` and ``val/nll``. The tracker
compares the configured metric (``train.best_metric``: ``val/macro_f1`` by default, or
``val/accuracy``, both with ties broken by the lower ``val/nll``, or ``val/nll`` itself) against the best seen; an improvement marks this step's checkpoint as the best, which
the rotation never deletes. With ``train.early_stopping``, ``patience`` evaluations in a row
without an improvement of more than ``min_delta`` end the run (``completed``, reason logged).

The tracker's state lives in :class:`emotrain.training.checkpoint.ResumeState`, so a resumed run
keeps its best score and its patience counter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

TIE_BREAK = "val/nll"
LOWER_IS_BETTER = frozenset({"val/nll"})
BestMetric = Literal["val/macro_f1", "val/accuracy", "val/nll"]


@dataclass
class EarlyStopping:
    """``patience`` evaluations without an improvement of more than ``min_delta`` stop the run."""

    patience: int = 5
    min_delta: float = 0.0

    def validate(self) -> None:
        if self.patience < 1:
            raise ValueError(f"early_stopping.patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ValueError(f"early_stopping.min_delta must be >= 0, got {self.min_delta}")


@dataclass
class BestState:
    """What survives a resume: the best score (and its tie-break value), its step, and the patience count."""

    score: float | None = None  # higher is better (a lower-is-better metric negated)
    value: float | None = None  # the metric as reported
    tie_break: float | None = None
    step: int | None = None
    evals_without_improvement: int = 0


def observe(metrics: Mapping[str, float], step: int, best: BestState, metric: str,
            stopping: EarlyStopping | None) -> tuple[bool, bool]:
    """Record one evaluation in ``best`` (in place). Returns (this step is the new best, stop now).

    The best checkpoint follows any improvement (higher score, or the same score with a lower
    ``val/nll``); patience restarts only on an improvement of more than ``min_delta``. An evaluation
    without ``metric`` (an empty val split) neither improves nor counts against patience.
    """
    if metric not in metrics or not math.isfinite(metrics[metric]):
        return False, False
    # Scores are kept "higher is better": a lower-is-better metric is negated.
    score = -float(metrics[metric]) if metric in LOWER_IS_BETTER else float(metrics[metric])
    tie_break = metrics.get(TIE_BREAK) if metric != TIE_BREAK else None
    min_delta = stopping.min_delta if stopping is not None else 0.0
    first = best.score is None
    significant = first or score > best.score + min_delta
    is_best = first or score > best.score or (
        score == best.score and tie_break is not None and best.tie_break is not None and tie_break < best.tie_break)
    if is_best:
        best.score, best.value, best.tie_break, best.step = score, float(metrics[metric]), tie_break, step
    best.evals_without_improvement = 0 if significant else best.evals_without_improvement + 1
    return is_best, stopping is not None and best.evals_without_improvement >= stopping.patience
