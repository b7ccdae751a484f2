"""A sweep's results over seeds: per setting, mean, standard deviation and 95% interval of each metric.

Read only from what the points left: each model's ``RUN/eval/<split>/report.json`` and, for a pair,
the fusion's ``fusion.json`` (the strategy it chose on val, with its val and test metrics). The setting
is chosen on **val** (the best mean of ``select_metric`` of the headline system: the fusion for a
pair, the one model otherwise); test numbers are reported, never used to choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from emotrain.evaluation.report_file import EvalReport
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.names import EVAL_SPLITS, FUSION, HEADLINE_METRICS, VAL
from emotrain.sweep.layout import PointDir, SweepDir
from emotrain.sweep.spec import Point, SweepConfig, expand_points, expand_settings

SPLITS = EVAL_SPLITS
METRICS = HEADLINE_METRICS
# Two-sided 95% Student t quantiles for 1..30 degrees of freedom (then the normal 1.96): the interval of
# a mean over a handful of seeds is much wider than +/- 2 std errors.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Stat:
    """One metric over seeds: the sample mean, the sample standard deviation (n-1; 0 for one seed) and
    the 95% t-interval of the mean (the mean itself for one seed)."""

    mean: float
    std: float
    ci95: tuple[float, float]
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        half = 0.0
        if n > 1:
            t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96  # n - 1 degrees of freedom
            half = t * std / math.sqrt(n)
        return cls(mean, std, (mean - half, mean + half), list(values))


@dataclass
class SettingSummary:
    name: str
    values: dict[str, Any]
    seeds: list[int]  # the seeds whose point completed
    missing: list[int]  # the seeds whose point did not (left out of every number)
    stats: dict[str, dict[str, dict[str, Stat]]] = field(default_factory=dict)  # system -> split -> metric
    fusion_chosen: dict[int, str] = field(default_factory=dict)  # seed -> strategy fusion chose on val


@dataclass
class SweepSummary:
    """What ``report/sweep.json`` holds."""

    name: str
    systems: list[str]
    headline: str
    select_metric: str
    chosen: str | None  # the setting chosen on val; None when no point completed
    chosen_on: str
    settings: list[SettingSummary]


def point_metrics(cfg: SweepConfig, pdir: PointDir) -> tuple[dict[str, dict[str, dict[str, float]]], str | None]:
    """system -> split -> metric of one completed point, and the fusion strategy it chose (pairs)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model in cfg.models:
        run = pdir.run(model)
        reports = {split: EvalReport.load(run.eval_report(split)) for split in SPLITS}
        out[model] = {split: {m: reports[split].metric(split, m) for m in METRICS} for split in SPLITS}
    if cfg.pair is None:
        return out, None
    fusion = FusionSummary.load(pdir.fusion)
    out[FUSION] = {split: {m: float(fusion.chosen_metrics(split)[m]) for m in METRICS} for split in SPLITS}
    return out, fusion.chosen


def summarise(cfg: SweepConfig, sweep: SweepDir) -> SweepSummary:
    systems = [*cfg.models, FUSION] if cfg.pair is not None else list(cfg.models)
    headline = systems[-1]
    by_setting: dict[str, list[Point]] = {}
    for point in expand_points(cfg):
        by_setting.setdefault(point.setting.name, []).append(point)
    settings = []
    for setting in expand_settings(cfg):
        summary = SettingSummary(setting.name, setting.values, [], [])
        collected: dict[str, dict[str, dict[str, list[float]]]] = {}
        for point in by_setting[setting.name]:
            pdir = sweep.point(point, cfg.models)
            if not pdir.is_done():
                summary.missing.append(point.seed)
                continue
            metrics, chosen = point_metrics(cfg, pdir)
            summary.seeds.append(point.seed)
            if chosen is not None:
                summary.fusion_chosen[point.seed] = chosen
            for system, splits in metrics.items():
                for split, values in splits.items():
                    for metric, value in values.items():
                        collected.setdefault(system, {}).setdefault(split, {}).setdefault(metric, []).append(value)
        summary.stats = {system: {split: {metric: Stat.of(values) for metric, values in metrics.items()}
                                  for split, metrics in splits.items()} for system, splits in collected.items()}
        settings.append(summary)
    done = [s for s in settings if s.seeds]
    chosen = max(done, key=lambda s: s.stats[headline][VAL][cfg.select_metric].mean).name if done else None
    return SweepSummary(
        name=cfg.name, systems=systems, headline=headline, select_metric=cfg.select_metric, chosen=chosen,
        chosen_on=f"val {cfg.select_metric} of {headline}, mean over seeds (test is never used to choose)",
        settings=settings,
    )
