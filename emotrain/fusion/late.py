"""Late fusion of two models' logits: the fixed-rule strategies and their shared frame.

Every strategy follows one protocol: ``fit(val_a_logits, val_b_logits, val_labels)`` fits
a temperature per model on validation data and then the strategy's own parameters on the
calibrated log-probabilities; ``predict_proba(a_logits, b_logits)`` applies the same
temperatures and mixes. Only ``fit`` ever sees labels, and callers pass it validation
data only, so nothing is tuned on test. ``params()`` returns every fitted number as JSON.
The learned strategies (stacking, gating) live in :mod:`emotrain.fusion.learned`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, TypeVar

import numpy as np

from emotrain.fusion.calibration import TemperatureConfig, fit_temperature, scaled_log_probs
from emotrain.evaluation.metrics import macro_f1, nll

T = TypeVar("T")


class FusionStrategy:
    """Temperature-calibrate both models, then combine (subclasses define how)."""

    name = "strategy"

    def __init__(self, temperature: TemperatureConfig | None = None) -> None:
        self.temperature_config = temperature or TemperatureConfig()
        self.temperatures: tuple[float, float] | None = None

    def fit(self, val_a_logits: np.ndarray, val_b_logits: np.ndarray, val_labels: np.ndarray) -> "FusionStrategy":
        val_labels = np.asarray(val_labels, np.int64)
        self.temperatures = (
            fit_temperature(val_a_logits, val_labels, self.temperature_config),
            fit_temperature(val_b_logits, val_labels, self.temperature_config),
        )
        self._fit(*self._calibrated(val_a_logits, val_b_logits), val_labels)
        return self

    def predict_proba(self, a_logits: np.ndarray, b_logits: np.ndarray) -> np.ndarray:
        if self.temperatures is None:
            raise RuntimeError(f"{self.name}: fit() before predict_proba()")
        return self._predict(*self._calibrated(a_logits, b_logits))

    def params(self) -> dict[str, Any]:
        """Every fitted parameter, as plain JSON data."""
        return {"temperatures": list(self.temperatures or ()), **self._params()}

    def restore(self, params: dict[str, Any]) -> "FusionStrategy":
        """This strategy as :meth:`fit` left it, from what :meth:`params` wrote (a bundle's fusion,
        applied to new data without refitting). A missing or malformed entry is a ValueError."""
        try:
            t_a, t_b = (float(t) for t in params["temperatures"])
            if not (t_a > 0 and t_b > 0):
                raise ValueError("temperatures must be > 0")
            self.temperatures = (t_a, t_b)
            self._restore(params)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{self.name}: malformed fitted parameters ({type(err).__name__}: {err})") from None
        return self

    def calibrated_single(self, logits: np.ndarray, model: int) -> np.ndarray:
        """Model ``model``'s (0 = A, 1 = B) calibrated probabilities: the fallback where only it could be trusted."""
        if self.temperatures is None:
            raise RuntimeError(f"{self.name}: fit() before calibrated_single()")
        return np.exp(scaled_log_probs(logits, self.temperatures[model]))

    def _calibrated(self, a_logits: np.ndarray, b_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if np.shape(a_logits) != np.shape(b_logits):
            raise ValueError(f"the two models' logits differ in shape: {np.shape(a_logits)} vs {np.shape(b_logits)}")
        t_a, t_b = self.temperatures
        return scaled_log_probs(a_logits, t_a), scaled_log_probs(b_logits, t_b)

    def _fit(self, log_pa: np.ndarray, log_pb: np.ndarray, labels: np.ndarray) -> None:
        """Fit on calibrated validation log-probabilities (nothing to fit by default)."""

    def _predict(self, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {}

    def _restore(self, params: dict[str, Any]) -> None:
        """Set the strategy's own fitted parameters from :meth:`_params` output (none by default)."""


def select_on_val(
    candidates: Sequence[T], proba_of: Callable[[T], np.ndarray], labels: np.ndarray
) -> tuple[T, list[dict[str, Any]]]:
    """The candidate with the best validation macro-F1, ties broken by lower NLL, then by order.

    Also returns every candidate's scores, which the report keeps so a reader can see how
    flat the choice was.
    """
    scored = []
    for cand in candidates:
        probs = proba_of(cand)
        scored.append((macro_f1(labels, probs.argmax(axis=1), probs.shape[1]), nll(probs, labels)))
    best = min(range(len(candidates)), key=lambda i: (-scored[i][0], scored[i][1], i))
    trace = [{"value": c, "val_macro_f1": f, "val_nll": n} for c, (f, n) in zip(candidates, scored)]
    return candidates[best], trace


def blend(weight_a: np.ndarray | float, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
    """``w * p_a + (1 - w) * p_b`` for a global w or one w per sample ([N, 1])."""
    return weight_a * np.exp(log_pa) + (1 - weight_a) * np.exp(log_pb)


class MeanFusion(FusionStrategy):
    """The plain average of the two calibrated distributions: the baseline every rule must beat."""

    name = "mean"

    def _predict(self, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        return blend(0.5, log_pa, log_pb)


class _GridSearchedFusion(FusionStrategy):
    """A mixing rule with one parameter, picked on validation from a grid by :func:`select_on_val`."""

    param_name = "value"

    def __init__(self, temperature: TemperatureConfig | None = None) -> None:
        super().__init__(temperature)
        self.value: float | None = None
        self.search: list[dict[str, Any]] = []

    def _grid(self) -> list[float]:
        raise NotImplementedError

    def _mix(self, value: float, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fit(self, log_pa: np.ndarray, log_pb: np.ndarray, labels: np.ndarray) -> None:
        self.value, self.search = select_on_val(self._grid(), lambda v: self._mix(v, log_pa, log_pb), labels)

    def _predict(self, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        return self._mix(self.value, log_pa, log_pb)

    def _params(self) -> dict[str, Any]:
        return {self.param_name: self.value, "search": self.search}

    def _restore(self, params: dict[str, Any]) -> None:
        self.value = float(params[self.param_name])
        self.search = list(params.get("search", []))


@dataclass
class WeightedConfig:
    grid_steps: int = 21  # candidate weights 0, 1/(steps-1), ..., 1

    def validate(self) -> None:
        if self.grid_steps < 2:
            raise ValueError("grid_steps must be at least 2")


class WeightedFusion(_GridSearchedFusion):
    """``w * p_a + (1 - w) * p_b`` with one global w chosen on validation."""

    name = "weighted"
    param_name = "weight_a"

    def __init__(self, config: WeightedConfig | None = None, temperature: TemperatureConfig | None = None) -> None:
        super().__init__(temperature)
        self.config = config or WeightedConfig()

    def _grid(self) -> list[float]:
        return np.linspace(0.0, 1.0, self.config.grid_steps).tolist()

    def _mix(self, value: float, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        return blend(value, log_pa, log_pb)


@dataclass
class ConfidenceConfig:
    # weight_a = c_a**s / (c_a**s + c_b**s) for certainty c; s = 0 is the plain mean
    sharpness: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])

    def validate(self) -> None:
        if not self.sharpness or min(self.sharpness) < 0:
            raise ValueError("sharpness needs at least one value, all >= 0")


def certainty(log_p: np.ndarray, measure: Literal["max_prob", "entropy"]) -> np.ndarray:
    """Per-sample certainty in [0, 1]: the top probability, or 1 - entropy / log C."""
    p = np.exp(log_p)
    if measure == "max_prob":
        return p.max(axis=1)
    entropy = -(p * log_p).sum(axis=1)
    return np.clip(1.0 - entropy / math.log(p.shape[1]), 0.0, 1.0)


class ConfidenceFusion(_GridSearchedFusion):
    """Per-sample weights: trust, on each sample, whichever model is more certain there.

    The certainty is raised to a power (the sharpness) chosen on validation, which spans
    the range from the plain mean (0) to picking the more certain model outright (large).
    """

    param_name = "sharpness"

    def __init__(
        self,
        measure: Literal["max_prob", "entropy"],
        config: ConfidenceConfig | None = None,
        temperature: TemperatureConfig | None = None,
    ) -> None:
        super().__init__(temperature)
        self.measure = measure
        self.name = f"confidence_{measure.replace('_', '')}"
        self.config = config or ConfidenceConfig()

    def _grid(self) -> list[float]:
        return list(self.config.sharpness)

    def _mix(self, value: float, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        eps = 1e-12  # two fully uncertain models (entropy at its maximum) share equally
        ca = certainty(log_pa, self.measure) ** value + eps
        cb = certainty(log_pb, self.measure) ** value + eps
        return blend((ca / (ca + cb))[:, None], log_pa, log_pb)

    def _params(self) -> dict[str, Any]:
        return {"measure": self.measure, **super()._params()}

    def _restore(self, params: dict[str, Any]) -> None:
        if params.get("measure", self.measure) != self.measure:
            raise ValueError(f"measure {params['measure']!r} is not {self.measure!r}")
        super()._restore(params)
