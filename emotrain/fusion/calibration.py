"""Temperature scaling (Guo et al., 2017): one scalar per model, fitted on validation logits.

Dividing logits by T leaves every prediction unchanged and only reshapes confidence, so it
is the safe first step before probabilities from two models are mixed. The validation NLL
is convex in 1/T, hence unimodal in log T, and a golden-section search with a fixed number
of steps over a bounded range finds its minimum deterministically (no seeds, no
tolerances that depend on the data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emotrain.evaluation.metrics import log_softmax

_GOLDEN = (math.sqrt(5) - 1) / 2
_STEPS = 80  # shrinks the log-T interval by 0.618**80, far below float precision


@dataclass
class TemperatureConfig:
    t_min: float = 0.05
    t_max: float = 20.0

    def validate(self) -> None:
        if not 0 < self.t_min < 1 < self.t_max:
            raise ValueError("need 0 < t_min < 1 < t_max")


def scaled_log_probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    return log_softmax(np.asarray(logits, np.float64) / temperature)


def _nll_at(logits: np.ndarray, labels: np.ndarray, log_t: float) -> float:
    return float(-scaled_log_probs(logits, math.exp(log_t))[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, config: TemperatureConfig | None = None) -> float:
    """The T in [t_min, t_max] minimising the mean NLL of ``softmax(logits / T)`` on ``labels``."""
    config = config or TemperatureConfig()
    logits = np.asarray(logits, np.float64)
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on zero labelled samples")
    lo, hi = math.log(config.t_min), math.log(config.t_max)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = _nll_at(logits, labels, a), _nll_at(logits, labels, b)
    for _ in range(_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = _nll_at(logits, labels, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = _nll_at(logits, labels, b)
    return math.exp((lo + hi) / 2)
