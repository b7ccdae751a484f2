"""The fusion recipe: fit on validation, choose on validation, report everything on test.

Test labels are read only by :func:`emotrain.evaluation.metrics.compute_metrics`, after every
temperature, weight and network has been fitted and the strategy has been chosen, so a
test score here is an honest estimate (the tests shuffle test labels to prove it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from emotrain.errors import UserError
from emotrain.names import AUDIO_TEXT, FUSION_ROLES, VAL, TEST, VIDEO_TEXT, calibrated_row, fused_row, raw_row
from emotrain.fusion.calibration import TemperatureConfig, fit_temperature, scaled_log_probs
from emotrain.fusion.late import (
    ConfidenceConfig,
    ConfidenceFusion,
    FusionStrategy,
    MeanFusion,
    WeightedConfig,
    WeightedFusion,
    select_on_val,
)
from emotrain.fusion.learned import GatingConfig, GatingFusion, StackingConfig, StackingFusion
from emotrain.fusion.runs import Aligned, RunPredictions, align, check_same_classes
from emotrain.evaluation.metrics import BOOTSTRAP_RESAMPLES, ECE_BINS, compute_metrics



@dataclass
class MetricsConfig:
    ece_bins: int = ECE_BINS
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = 0

    def validate(self) -> None:
        if self.ece_bins < 1 or self.bootstrap_resamples < 1:
            raise ValueError("ece_bins and bootstrap_resamples must be >= 1")


_FACTORIES: dict[str, Callable[["FusionConfig"], FusionStrategy]] = {
    "mean": lambda c: MeanFusion(c.temperature),
    "weighted": lambda c: WeightedFusion(c.weighted, c.temperature),
    "confidence_maxprob": lambda c: ConfidenceFusion("max_prob", c.confidence, c.temperature),
    "confidence_entropy": lambda c: ConfidenceFusion("entropy", c.confidence, c.temperature),
    "stacking": lambda c: StackingFusion(c.stacking, c.temperature),
    "gating": lambda c: GatingFusion(c.gating, c.temperature),
}
STRATEGY_NAMES = tuple(_FACTORIES)


@dataclass
class FusionConfig:
    strategies: list[str] = field(default_factory=lambda: list(STRATEGY_NAMES))
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    weighted: WeightedConfig = field(default_factory=WeightedConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    stacking: StackingConfig = field(default_factory=StackingConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Of the labelled keys either model scored on a split, at least this share must be scored by
    # both: runs evaluated on different shards would otherwise "fuse" over a handful of rows.
    min_key_overlap: float = 0.5

    def validate(self) -> None:
        if not 0.0 <= self.min_key_overlap <= 1.0:
            raise ValueError(f"min_key_overlap must be in [0, 1], got {self.min_key_overlap}")
        unknown = sorted(set(self.strategies) - set(STRATEGY_NAMES))
        if unknown or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies must be distinct names from {list(STRATEGY_NAMES)} (unknown: {unknown})")


def build_strategies(config: FusionConfig) -> list[FusionStrategy]:
    return [_FACTORIES[name](config) for name in config.strategies]


def restore_strategy(name: str, params: dict[str, Any], config: FusionConfig) -> FusionStrategy:
    """A fitted strategy back from its name and ``params()`` (what ``fusion.json`` and a bundle hold)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown fusion strategy {name!r} (known: {', '.join(STRATEGY_NAMES)})")
    return _FACTORIES[name](config).restore(params)


@dataclass
class FusionResult:
    classes: list[str]
    chosen: str
    val_scores: dict[str, dict[str, float]]  # strategy -> val macro-F1 and NLL (the choice)
    params: dict[str, dict[str, Any]]  # strategy or model -> fitted parameters
    counts: dict[str, dict[str, int]]  # split -> keys both / only one model scored, unlabelled
    rows: dict[str, dict[str, Any]]  # system -> test metrics
    # The chosen strategy on val, where it was fitted (in-sample: optimistic), so that a sweep can put
    # val and test side by side without refitting anything.
    chosen_val: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_row(self) -> str:
        return fused_row(self.chosen)


def _fused_with_fallback(strategy: FusionStrategy, test: Aligned) -> tuple[np.ndarray, np.ndarray]:
    """Fused probabilities where both models scored; elsewhere the one model's calibrated ones."""
    probs = [strategy.predict_proba(test.a_logits, test.b_logits)]
    labels = [test.labels]
    for model, only in enumerate((test.only_a, test.only_b)):
        probs.append(strategy.calibrated_single(only.logits, model))
        labels.append(only.labels)
    return np.concatenate(probs), np.concatenate(labels)


def check_kinds(audio: RunPredictions, video: RunPredictions) -> None:
    """The audio run is model A, the video run model B, and they are two runs (when their configs say)."""
    if audio.path.resolve() == video.path.resolve():
        raise UserError(f"--audio and --video name the same run: {audio.path}")
    for flag, run, kind in (("--audio", audio, AUDIO_TEXT), ("--video", video, VIDEO_TEXT)):
        if run.kind is not None and run.kind != kind:
            raise UserError(f"{flag} {run.path} is a {run.kind} run, not {kind} (swapped --audio and --video?)")


def fuse_runs(a: RunPredictions, b: RunPredictions, config: FusionConfig) -> FusionResult:
    """Fit every strategy on val (keys both models scored), pick one by val macro-F1, score all on test."""
    check_kinds(a, b)
    classes = check_same_classes(a, b)
    val = align(a.splits[VAL], b.splits[VAL], VAL)
    test = align(a.splits[TEST], b.splits[TEST], TEST)
    for split, aligned in ((VAL, val), (TEST, test)):
        counts = aligned.counts(*FUSION_ROLES)
        scored = counts["both"] + counts["only_audio"] + counts["only_video"]
        if scored == 0 or counts["both"] / scored < config.min_key_overlap:
            raise UserError(
                f"{split}: only {counts['both']} of the {scored} labelled keys were scored by both runs "
                f"(min_key_overlap {config.min_key_overlap}): were they evaluated on the same shards?")
    if len(val.labels) == 0:
        raise UserError("the two runs share no labelled validation keys: nothing to fit fusion on")
    try:
        strategies = [s.fit(val.a_logits, val.b_logits, val.labels) for s in build_strategies(config)]
    except ValueError as err:
        raise UserError(str(err)) from None
    chosen, trace = select_on_val(strategies, lambda s: s.predict_proba(val.a_logits, val.b_logits), val.labels)

    m = config.metrics

    def metrics(scores: np.ndarray, labels: np.ndarray, from_logits: bool) -> dict[str, Any]:
        return compute_metrics(scores, labels, classes, from_logits=from_logits, n_bins=m.ece_bins,
                               resamples=m.bootstrap_resamples, seed=m.bootstrap_seed)

    rows: dict[str, dict[str, Any]] = {}
    params: dict[str, dict[str, Any]] = {}
    for name, run, val_logits in zip(FUSION_ROLES, (a, b), (val.a_logits, val.b_logits)):
        preds = run.splits[TEST]
        keep = preds.labels >= 0
        if not keep.any():
            raise UserError(f"{run.path}: no labelled test predictions")
        t = fit_temperature(val_logits, val.labels, config.temperature)
        params[name] = {"temperature": t}
        rows[raw_row(name)] = metrics(preds.logits[keep], preds.labels[keep], True)
        rows[calibrated_row(name)] = metrics(scaled_log_probs(preds.logits[keep], t), preds.labels[keep], True)
    for strategy in strategies:
        params[strategy.name] = strategy.params()
        rows[fused_row(strategy.name)] = metrics(*_fused_with_fallback(strategy, test), False)
    return FusionResult(
        classes=classes,
        chosen=chosen.name,
        val_scores={t["value"].name: {"macro_f1": t["val_macro_f1"], "nll": t["val_nll"]} for t in trace},
        params=params,
        counts={VAL: val.counts(*FUSION_ROLES), TEST: test.counts(*FUSION_ROLES)},
        rows=rows,
        chosen_val=metrics(chosen.predict_proba(val.a_logits, val.b_logits), val.labels, False),
    )
