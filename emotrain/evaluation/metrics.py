"""Classification metrics in plain numpy, with scikit-learn's conventions.

Evaluation runs inside training jobs and the fusion CLI, where scikit-learn is not a
dependency; the tests check every number here against ``sklearn.metrics``. Conventions:
a ratio whose denominator is zero is 0 (``zero_division=0``), and macro averages run over
every class of the scheme, including classes absent from both labels and predictions
(``labels=range(C)``), so a report never quietly drops a class the model cannot find.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
_BOOTSTRAP_CELLS = 4_000_000  # resampled indices held in memory at once


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(preds, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _f1(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted), as scikit-learn computes it."""
    return _safe_div(2 * tp, n_true + n_pred)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = np.diag(confusion)
    n_true = confusion.sum(axis=1)
    n_pred = confusion.sum(axis=0)
    return {
        "precision": _safe_div(tp, n_pred),
        "recall": _safe_div(tp, n_true),
        "f1": _f1(tp, n_true, n_pred),
        "support": n_true,
    }


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """The selection criterion of the fusion strategies (cheaper than :func:`compute_metrics`)."""
    return float(per_class_scores(confusion_matrix(labels, preds, num_classes))["f1"].mean())


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class; probabilities are clipped at float64 eps."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, np.finfo(np.float64).eps, 1.0)).mean())


def calibration_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Equal-width bins (lo, hi] over the top-class probability: count, mean confidence, accuracy."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=n_bins)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": _safe_div(np.bincount(bins, confidence, n_bins), count).tolist(),
        "accuracy": _safe_div(np.bincount(bins, correct, n_bins), count).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Sum over bins of (bin share) * |accuracy - mean confidence|."""
    return _ece(calibration_bins(probs, labels, n_bins))


def _ece(bins: dict[str, list[float]]) -> float:
    count = np.asarray(bins["count"], np.float64)
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1.0))


def bootstrap_intervals(
    labels: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile intervals for accuracy and macro-F1 over resamples of the evaluated samples.

    The resample indices depend only on ``seed`` and N, so two systems scored on the same
    samples are resampled identically (a paired comparison).
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    acc = np.empty(resamples)
    f1 = np.empty(resamples)
    chunk = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        y, p = labels[idx], preds[idx]
        hit = y == p
        row = np.arange(b)[:, None] * num_classes
        size = b * num_classes
        tp = np.bincount((row + y)[hit], minlength=size).reshape(b, num_classes)
        n_true = np.bincount((row + y).ravel(), minlength=size).reshape(b, num_classes)
        n_pred = np.bincount((row + p).ravel(), minlength=size).reshape(b, num_classes)
        acc[start:start + b] = hit.mean(axis=1)
        f1[start:start + b] = _f1(tp, n_true, n_pred).mean(axis=1)
    tail = 100 * (1 - level) / 2
    return {
        "accuracy": np.percentile(acc, [tail, 100 - tail]).tolist(),
        "macro_f1": np.percentile(f1, [tail, 100 - tail]).tolist(),
    }


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    from_logits: bool = False,
    n_bins: int = ECE_BINS,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric of one split as plain JSON data.

    ``scores`` are probabilities [N, C] (or logits with ``from_logits=True``); ``labels``
    are class indices in [0, C) (drop unlabelled rows first). The prediction is the argmax
    of ``scores`` as given, so logits and their softmax predict the same class.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    num_classes = len(class_names)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must have shape [N, {num_classes}], got {list(scores.shape)}")
    if len(labels) != len(scores) or len(labels) == 0:
        raise ValueError(f"need one label per row and at least one row ({len(labels)} labels, {len(scores)} rows)")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    preds = scores.argmax(axis=1)
    probs = softmax(scores) if from_logits else scores
    confusion = confusion_matrix(labels, preds, num_classes)
    per_class = per_class_scores(confusion)
    support = per_class["support"]
    averages = {}
    for name in ("precision", "recall", "f1"):
        averages[f"macro_{name}"] = float(per_class[name].mean())
        averages[f"weighted_{name}"] = float(_safe_div((per_class[name] * support).sum(), support.sum()))
    bins = calibration_bins(probs, labels, n_bins)
    if from_logits:
        nll_value = float(-log_softmax(scores)[np.arange(len(labels)), labels].mean())
    else:
        nll_value = nll(probs, labels)
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()),
        **averages,
        "ece": _ece(bins),
        "nll": nll_value,
        "bootstrap": {
            **bootstrap_intervals(labels, preds, num_classes, resamples, seed), "resamples": resamples, "seed": seed
        },
        "per_class": {
            name: {
                "precision": float(per_class["precision"][i]),
                "recall": float(per_class["recall"][i]),
                "f1": float(per_class["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "classes": list(class_names),
        "confusion_matrix": confusion.tolist(),
        "calibration": bins,
    }
