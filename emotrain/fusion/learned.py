"""Late fusion with learned parameters: a stacking meta-learner and a per-sample gate.

Both are trained on validation data only, so their capacity is chosen by k-fold
cross-validation inside validation (held-out NLL), then refitted on all of it. Training
is full-batch in float64 from a fixed initialisation with a private RNG, so a fit depends
on nothing but the data, the config and the seed (and never disturbs the global RNG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotrain.fusion.calibration import TemperatureConfig
from emotrain.fusion.late import FusionStrategy, certainty


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per sample: each class is shuffled (seeded) and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), np.int64)
    offset = 0
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        fold_of[idx] = (offset + np.arange(len(idx))) % folds
        offset += len(idx)  # continue the deal, so small classes do not all start in fold 0
    return fold_of


def _check_folds(folds: int) -> None:
    if folds < 2:
        raise ValueError("folds must be at least 2")


def cross_validate(
    labels: np.ndarray,
    folds: int,
    seed: int,
    score_fold: Callable[[torch.Tensor, torch.Tensor], list[float]],
    name: str,
) -> np.ndarray:
    """Mean over stratified folds of ``score_fold(train_mask, held_out_mask)`` (a vector of scores)."""
    if len(labels) < 2 * folds:
        raise ValueError(
            f"{name}: {folds}-fold cross-validation needs at least {2 * folds} labelled validation samples, "
            f"got {len(labels)}"
        )
    fold_of = stratified_folds(labels, folds, seed)
    scores = []
    for k in range(folds):
        held = torch.from_numpy(fold_of == k)
        scores.append(score_fold(~held, held))
    return np.mean(scores, axis=0)


@dataclass
class StackingConfig:
    folds: int = 5
    l2: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    max_iter: int = 100
    seed: int = 0

    def validate(self) -> None:
        _check_folds(self.folds)
        if not self.l2 or min(self.l2) <= 0:
            raise ValueError("l2 needs at least one value, all > 0")


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int) -> torch.Tensor:
    """Multinomial logistic regression (L2 on the weights, not the bias) by L-BFGS from zero.

    With l2 > 0 the problem is strictly convex, so the zero start loses nothing.
    """
    theta = torch.zeros(x.shape[1] + 1, num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ theta[:-1] + theta[-1], y) + l2 * theta[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def _logistic_nll(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(x @ theta[:-1] + theta[-1], y))


class StackingFusion(FusionStrategy):
    """A multinomial logistic regression over both models' calibrated log-probabilities."""

    name = "stacking"

    def __init__(self, config: StackingConfig | None = None, temperature: TemperatureConfig | None = None) -> None:
        super().__init__(temperature)
        self.config = config or StackingConfig()
        self.l2: float | None = None
        self.cv_nll: dict[str, float] = {}
        self.theta: torch.Tensor | None = None

    def _fit(self, log_pa: np.ndarray, log_pb: np.ndarray, labels: np.ndarray) -> None:
        cfg = self.config
        x = torch.from_numpy(np.concatenate([log_pa, log_pb], axis=1))
        y = torch.from_numpy(labels)
        num_classes = log_pa.shape[1]

        def held_out_nll(l2: float) -> float:
            def score(train: torch.Tensor, held: torch.Tensor) -> list[float]:
                theta = _fit_logistic(x[train], y[train], num_classes, l2, cfg.max_iter)
                return [_logistic_nll(theta, x[held], y[held])]

            return float(cross_validate(labels, cfg.folds, cfg.seed, score, self.name)[0])

        self.cv_nll = {repr(l2): held_out_nll(l2) for l2 in cfg.l2}
        self.l2 = min(cfg.l2, key=lambda v: self.cv_nll[repr(v)])
        self.theta = _fit_logistic(x, y, num_classes, self.l2, cfg.max_iter)

    def _predict(self, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.concatenate([log_pa, log_pb], axis=1))
        return torch.softmax(x @ self.theta[:-1] + self.theta[-1], dim=1).numpy()

    def _params(self) -> dict[str, Any]:
        return {"l2": self.l2, "cv_nll": self.cv_nll,
                "weights": self.theta[:-1].tolist(), "bias": self.theta[-1].tolist()}

    def _restore(self, params: dict[str, Any]) -> None:
        weights = torch.tensor(params["weights"], dtype=torch.float64)
        bias = torch.tensor(params["bias"], dtype=torch.float64)
        if weights.ndim != 2 or bias.shape != (weights.shape[1],) or weights.shape[0] != 2 * weights.shape[1]:
            raise ValueError(f"weights {tuple(weights.shape)} and bias {tuple(bias.shape)} do not fit two models' classes")
        self.theta = torch.cat([weights, bias[None]])
        self.l2, self.cv_nll = params.get("l2"), dict(params.get("cv_nll", {}))


@dataclass
class GatingConfig:
    folds: int = 5
    hidden: int = 16
    lr: float = 0.01
    epochs: list[int] = field(default_factory=lambda: [25, 50, 100, 200])
    weight_decay: list[float] = field(default_factory=lambda: [0.0, 1e-3, 1e-2])
    seed: int = 0

    def validate(self) -> None:
        _check_folds(self.folds)
        if self.hidden < 1 or self.lr <= 0:
            raise ValueError("hidden must be >= 1 and lr > 0")
        if not self.epochs or min(self.epochs) < 1:
            raise ValueError("epochs needs at least one value, all >= 1")
        if not self.weight_decay or min(self.weight_decay) < 0:
            raise ValueError("weight_decay needs at least one value, all >= 0")


def _gate_inputs(log_pa: np.ndarray, log_pb: np.ndarray) -> torch.Tensor:
    """What the gate sees per sample: both log-distributions and both models' certainties."""
    certainties = [certainty(lp, m)[:, None] for lp in (log_pa, log_pb) for m in ("max_prob", "entropy")]
    return torch.from_numpy(np.concatenate([log_pa, log_pb, *certainties], axis=1))


class _Gate(nn.Module):
    """Per-sample mixing weights over the two models; the output is the mixture's log-probs."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, inputs: torch.Tensor, log_pa: torch.Tensor, log_pb: torch.Tensor) -> torch.Tensor:
        log_w = torch.log_softmax(self.net(inputs), dim=1)
        return torch.logsumexp(torch.stack([log_w[:, :1] + log_pa, log_w[:, 1:] + log_pb]), dim=0)


def _setting(epochs: int, weight_decay: float) -> str:
    return f"epochs={epochs},weight_decay={weight_decay!r}"


class GatingFusion(FusionStrategy):
    """A small network that reads both models' outputs and decides, per sample, whom to trust."""

    name = "gating"

    def __init__(self, config: GatingConfig | None = None, temperature: TemperatureConfig | None = None) -> None:
        super().__init__(temperature)
        self.config = config or GatingConfig()
        self.epochs: int | None = None
        self.weight_decay: float | None = None
        self.cv_nll: dict[str, float] = {}
        self.gate: _Gate | None = None

    def _new_gate(self, in_features: int) -> _Gate:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            return _Gate(in_features, self.config.hidden).double()

    def _train(self, data: tuple[torch.Tensor, ...], y: torch.Tensor, weight_decay: float, epochs: list[int],
               held_out: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None) -> tuple[_Gate, list[float]]:
        """Train to max(epochs); with ``held_out``, also return its NLL after each of ``epochs``."""
        gate = self._new_gate(data[0].shape[1])
        opt = torch.optim.Adam(gate.parameters(), lr=self.config.lr, weight_decay=weight_decay)
        checkpoints, scores = set(epochs), []
        for epoch in range(1, max(epochs) + 1):
            opt.zero_grad()
            F.nll_loss(gate(*data), y).backward()
            opt.step()
            if held_out is not None and epoch in checkpoints:
                with torch.no_grad():
                    scores.append(float(F.nll_loss(gate(*held_out[0]), held_out[1])))
        return gate, scores

    def _fit(self, log_pa: np.ndarray, log_pb: np.ndarray, labels: np.ndarray) -> None:
        cfg = self.config
        data = (_gate_inputs(log_pa, log_pb), torch.from_numpy(log_pa), torch.from_numpy(log_pb))
        y = torch.from_numpy(labels)
        epochs = sorted(set(cfg.epochs))
        self.cv_nll = {}
        for wd in cfg.weight_decay:
            def score(train: torch.Tensor, held: torch.Tensor) -> list[float]:
                held_out = (tuple(t[held] for t in data), y[held])
                return self._train(tuple(t[train] for t in data), y[train], wd, epochs, held_out)[1]

            for e, loss in zip(epochs, cross_validate(labels, cfg.folds, cfg.seed, score, self.name)):
                self.cv_nll[_setting(e, wd)] = float(loss)
        self.epochs, self.weight_decay = min(
            ((e, wd) for wd in cfg.weight_decay for e in epochs), key=lambda c: self.cv_nll[_setting(*c)]
        )
        self.gate = self._train(data, y, self.weight_decay, [self.epochs])[0]

    def _predict(self, log_pa: np.ndarray, log_pb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.gate(_gate_inputs(log_pa, log_pb), torch.from_numpy(log_pa), torch.from_numpy(log_pb))
        return out.exp().numpy()

    def _params(self) -> dict[str, Any]:
        state = {k: v.tolist() for k, v in self.gate.state_dict().items()}
        return {"epochs": self.epochs, "weight_decay": self.weight_decay, "cv_nll": self.cv_nll, "state": state}

    def _restore(self, params: dict[str, Any]) -> None:
        state = {k: torch.tensor(v, dtype=torch.float64) for k, v in params["state"].items()}
        first = state["net.0.weight"]
        gate = _Gate(first.shape[1], first.shape[0]).double()
        gate.load_state_dict(state, strict=True)
        self.gate = gate
        self.epochs, self.weight_decay = params.get("epochs"), params.get("weight_decay")
        self.cv_nll = dict(params.get("cv_nll", {}))
