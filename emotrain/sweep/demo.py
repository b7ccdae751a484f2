"""The demo's multi-seed variant: the demo's two models and fusion as a sweep over training seeds.

``emotrain demo --seeds N`` (or ``--sweep FILE``) keeps the demo's corpus and shards and runs the sweep
``sweeps/demo`` (or FILE) on them with the demo's own training configs, overrides and fusion config, so
each seed is exactly one single-seed demo run; the table is mean +/- std over the seeds on test.
"""

from __future__ import annotations

from pathlib import Path

from emotrain.config import find_config, load_config
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import MODELS, PairConfigs, SweepConfig
from emotrain.sweep.summary import METRICS, SweepSummary
from emotrain.names import AUDIO_TEXT, METRIC_LABELS as LABELS, TEST, VIDEO_TEXT
from emotrain.recipes.demo import DemoConfig

DEFAULT_SWEEP = "sweeps/demo"


def demo_sweep(demo: DemoConfig, shards: Path, sweep_file: str | None, seeds: int | None) -> SweepConfig:
    """The sweep file with the demo's shards, configs, overrides and CPU ranks filled in (``seeds``: 0..N-1)."""
    file = find_config(sweep_file or DEFAULT_SWEEP)
    cfg = load_config(SweepConfig, file)
    cfg.name = cfg.name or file.stem
    cfg.shards = str(shards)
    if sweep_file is None:  # the packaged demo sweep: the demo's own settings, whatever demo.yaml says now
        cfg.pair = PairConfigs(demo.train_configs[AUDIO_TEXT], demo.train_configs[VIDEO_TEXT], demo.fusion)
        cfg.train_config = None
        cfg.processes = demo.processes
    cfg.overrides = [*demo.train_overrides, *(f"{model}.{item}" for model in MODELS
                                              for item in demo.model_overrides.get(model, [])), *cfg.overrides]
    if seeds is not None:
        cfg.seeds = list(range(seeds))
    cfg.validate()
    return cfg


def seeds_table(summary: SweepSummary) -> str:
    """Per setting and system: test mean +/- std over the seeds of the four headline metrics."""
    width = max(len(f"{s.name}: {system}") for s in summary.settings for system in summary.systems) + 2
    header = "setting: system".ljust(width) + "".join(f"{LABELS[m]:>17}" for m in METRICS) + "   seeds"
    lines = [header, "-" * len(header)]
    for setting in summary.settings:
        if not setting.seeds:
            lines.append(f"{setting.name}: no seed completed")
            continue
        for system in summary.systems:
            stats = setting.stats[system][TEST]
            cells = "".join(f"{stats[m].mean:>9.3f} +/- {stats[m].std:.3f}" for m in METRICS)
            mark = "  <- chosen on val" if setting.name == summary.chosen and system == summary.headline else ""
            lines.append(f"{setting.name}: {system}".ljust(width) + cells + f"   {len(setting.seeds)}{mark}")
    return "\n".join(lines)


def run_demo_sweep(cfg: SweepConfig, sweep: SweepDir) -> tuple[str, list[str]]:
    """Every seed not yet done, then the report; returns the table and the points that failed."""
    from emotrain.sweep.outputs import write_report
    from emotrain.sweep.runner import run_local
    from emotrain.sweep.summary import summarise

    outcome = run_local(cfg, sweep)
    summary = summarise(cfg, sweep)
    if summary.chosen is None:
        return "no seed completed", outcome.failed
    write_report(cfg, sweep, summary)
    return seeds_table(summary), outcome.failed
