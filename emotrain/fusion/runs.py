"""Reading two evaluated runs and lining their predictions up by turn key.

The two models are scored by separate jobs, so nothing guarantees the same rows in the
same order: rows are matched by key, never by position. Keys only one model scored are
kept apart (the fused system falls back to that model there) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emotrain.names import EVAL_SPLITS
from emotrain.errors import UserError
from emotrain.training.rundir import RunDir
from emotrain.evaluation.predictions import CLASSES_FILE, Predictions, load_classes, load_predictions

SPLITS = EVAL_SPLITS


@dataclass(frozen=True)
class RunPredictions:
    """What one run's evaluation left in ``RUN/predictions/``."""

    path: Path
    classes: list[str]
    splits: dict[str, Predictions]
    kind: str | None = None  # model.kind of the run's config, when the folder holds one


def load_run(run_dir: str | Path) -> RunPredictions:
    """Load the class list and the val and test predictions of a run, checking they agree."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    run = RunDir(run_dir)
    pred_dir = run.predictions_dir
    classes = load_classes(pred_dir)
    splits = {split: load_predictions(run.predictions(split)) for split in SPLITS}
    for split, preds in splits.items():
        if preds.num_classes != len(classes):
            raise UserError(
                f"{run.predictions(split)}: {preds.num_classes} logit columns but "
                f"{len(classes)} classes in {pred_dir / CLASSES_FILE}"
            )
    return RunPredictions(run_dir, classes, splits, run.model_kind())


def check_same_classes(a: RunPredictions, b: RunPredictions) -> list[str]:
    if a.classes != b.classes:
        raise UserError(f"the runs name different classes: {a.path} has {a.classes}, {b.path} has {b.classes}")
    return a.classes


@dataclass(frozen=True)
class Aligned:
    """One split of two runs, matched by key (labelled rows only)."""

    a_logits: np.ndarray  # [N, C], keys both models scored
    b_logits: np.ndarray
    labels: np.ndarray  # [N]
    only_a: Predictions  # labelled keys only model A scored
    only_b: Predictions
    unlabelled: int  # distinct keys (of either model) without a label, left out of everything

    def counts(self, name_a: str, name_b: str) -> dict[str, int]:
        """Labelled keys fused, labelled keys only one model scored (its fallback), unlabelled keys."""
        return {"both": len(self.labels), f"only_{name_a}": len(self.only_a.keys),
                f"only_{name_b}": len(self.only_b.keys), "unlabelled": self.unlabelled}


def _subset(preds: Predictions, mask: np.ndarray) -> Predictions:
    return Predictions(preds.keys[mask], preds.logits[mask], preds.labels[mask])


def align(a: Predictions, b: Predictions, where: str) -> Aligned:
    """Match rows by key; a key both scored must carry the same label in both files."""
    common, ia, ib = np.intersect1d(a.keys, b.keys, assume_unique=True, return_indices=True)
    disagree = np.flatnonzero(a.labels[ia] != b.labels[ib])
    if len(disagree):
        k = disagree[0]
        raise UserError(
            f"{where}: {len(disagree)} key(s) carry different labels in the two runs, e.g. {common[k]!r}: "
            f"{a.labels[ia[k]]} vs {b.labels[ib[k]]} (were they evaluated on the same shards and label scheme?)"
        )
    labelled = a.labels[ia] >= 0
    only_a = ~np.isin(a.keys, common) & (a.labels >= 0)
    only_b = ~np.isin(b.keys, common) & (b.labels >= 0)
    unlabelled = len(np.union1d(a.keys[a.labels < 0], b.keys[b.labels < 0]))
    return Aligned(
        a_logits=a.logits[ia[labelled]],
        b_logits=b.logits[ib[labelled]],
        labels=a.labels[ia[labelled]],
        only_a=_subset(a, only_a),
        only_b=_subset(b, only_b),
        unlabelled=unlabelled,
    )
