"""The prediction files that `emotrain evaluate` writes and `emotrain fuse` reads.

One ``.npz`` per split holds ``keys`` (turn keys as a fixed-width unicode array),
``logits`` (float32 [N, C]) and ``labels`` (int64 [N], -1 = unlabelled). Keys are stored
as unicode, never as Python objects, so a file loads with ``allow_pickle=False`` and
reading a prediction file from someone else can never run code. ``classes.json`` beside
them names the columns of ``logits``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from emotrain.files import atomic_output, write_atomic
from emotrain.errors import UserError

CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Predictions:
    """One split scored by one model: row i of ``logits`` and ``labels`` belongs to ``keys[i]``."""

    keys: np.ndarray  # str [N], unique
    logits: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # int64 [N], -1 = unlabelled

    def __post_init__(self) -> None:
        n = len(self.keys)
        if self.keys.ndim != 1 or self.logits.ndim != 2 or self.labels.ndim != 1:
            raise ValueError("keys and labels must be 1-D and logits 2-D")
        if self.logits.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(f"{n} keys but {self.logits.shape[0]} logit rows and {self.labels.shape[0]} labels")
        if len(np.unique(self.keys)) != n:
            raise ValueError("turn keys repeat")
        if n and (self.labels.min() < -1 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [-1, {self.num_classes - 1}]")
        if not np.isfinite(self.logits).all():
            raise ValueError("logits hold NaN or infinity")

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])


def save_predictions(path: str | Path, keys: Sequence[str], logits: np.ndarray, labels: np.ndarray) -> Path:
    """Validate and write one split's predictions (parent folders are created)."""
    preds = Predictions(
        keys=np.asarray(list(keys), dtype=np.str_),
        logits=np.asarray(logits, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:  # a file object: numpy appends no ".npz"
        np.savez(fh, keys=preds.keys, logits=preds.logits, labels=preds.labels)
    return path


def load_predictions(path: str | Path) -> Predictions:
    """Read a file written by :func:`save_predictions`; any defect is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prediction file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted({"keys", "logits", "labels"} - set(data.files))
            if missing:
                raise UserError(f"{path}: missing array(s) {', '.join(missing)}")
            keys, logits, labels = data["keys"], data["logits"], data["labels"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a readable prediction file ({err})") from None
    if keys.dtype.kind != "U":
        raise UserError(f"{path}: keys must be a unicode array, got dtype {keys.dtype}")
    if logits.dtype.kind != "f" or labels.dtype.kind not in "iu":
        raise UserError(f"{path}: logits must be float and labels integer (got {logits.dtype}, {labels.dtype})")
    try:
        return Predictions(keys=keys, logits=logits.astype(np.float32), labels=labels.astype(np.int64))
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


def save_classes(pred_dir: str | Path, classes: Sequence[str]) -> Path:
    """Write ``classes.json`` (the names of the logit columns) into a predictions folder."""
    path = Path(pred_dir) / CLASSES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(list(classes)) + "\n")
    return path


def load_classes(pred_dir: str | Path) -> list[str]:
    """Read ``classes.json`` from a predictions folder; a missing or malformed file is a UserError."""
    path = Path(pred_dir) / CLASSES_FILE
    if not path.is_file():
        raise UserError(f"class list not found: {path}")
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path}: expected a list of at least two class names")
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: class names repeat")
    return classes
