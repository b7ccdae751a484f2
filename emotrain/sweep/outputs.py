"""What ``emotrain sweep report`` writes into ``SWEEP/report/``: ``sweep.md``, ``sweep.json``, ``sweep.png``
and TensorBoard's HParams view under ``tb/`` (one session per point, so runs compare there by setting and seed).

The figure is a bare ``matplotlib.figure.Figure`` saved by :func:`emotrain.evaluation.report.save_figure`
(no pyplot state, no GUI backend), as every other report.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from emotrain.evaluation.report import save_figure
from emotrain.files import write_atomic
from emotrain.names import METRIC_LABELS as LABELS, TEST
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import SweepConfig, expand_points
from emotrain.sweep.summary import METRICS, SPLITS, SweepSummary, point_metrics

PLOT_METRIC = "macro_f1"


def render_markdown(summary: SweepSummary) -> str:
    """One table: a row per (setting, system), each cell mean +/- std over seeds [95% interval]."""
    header = ["setting", "system", "seeds"] + [f"{split} {LABELS[m]}" for split in SPLITS for m in METRICS]
    lines = [
        f"# Sweep {summary.name}",
        "",
        f"Chosen on val: **{summary.chosen}** ({summary.chosen_on}). Cells: mean +/- std over seeds "
        "[95% t-interval of the mean].",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * 3 + "---:|" * (len(header) - 3),
    ]
    for setting in summary.settings:
        name = f"**{setting.name}** (chosen)" if setting.name == summary.chosen else setting.name
        if not setting.seeds:
            lines.append(f"| {name} | - | 0 (missing {setting.missing}) |" + " - |" * (len(header) - 3))
            continue
        seeds = f"{len(setting.seeds)}" + (f" (missing {setting.missing})" if setting.missing else "")
        for system in summary.systems:
            cells = []
            for split in SPLITS:
                for metric in METRICS:
                    stat = setting.stats[system][split][metric]
                    cells.append(f"{stat.mean:.3f} +/- {stat.std:.3f} [{stat.ci95[0]:.3f}, {stat.ci95[1]:.3f}]")
            lines.append(f"| {name} | {system} | {seeds} | " + " | ".join(cells) + " |")
    chosen_fusion = {s.name: s.fusion_chosen for s in summary.settings if s.fusion_chosen}
    if chosen_fusion:
        lines += ["", "Fusion strategy each point chose on val: "
                  + "; ".join(f"{name}: {', '.join(f'seed {k} {v}' for k, v in by_seed.items())}"
                              for name, by_seed in chosen_fusion.items())]
    return "\n".join(lines) + "\n"


def spread_figure(summary: SweepSummary) -> Figure:
    """Test macro-F1 per setting for each system: mean with a +/- std bar, every seed as a dot."""
    done = [s for s in summary.settings if s.seeds]
    fig = Figure(figsize=(max(6.5, 3.0 + 1.8 * len(done)), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(done))
    width = 0.8 / len(summary.systems)
    for k, system in enumerate(summary.systems):
        offset = (k - (len(summary.systems) - 1) / 2) * width
        stats = [s.stats[system][TEST][PLOT_METRIC] for s in done]
        ax.errorbar(x + offset, [st.mean for st in stats], yerr=[st.std for st in stats], fmt="o", capsize=4,
                    label=f"{system} (mean +/- std)")
        for i, st in enumerate(stats):
            ax.scatter([x[i] + offset] * len(st.values), st.values, s=12, color="grey", alpha=0.7, zorder=3)
    ax.set_xticks(x, [f"{s.name}\n(chosen on val)" if s.name == summary.chosen else s.name for s in done],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"test {LABELS[PLOT_METRIC]}")
    ax.set_title(f"sweep {summary.name}: test {LABELS[PLOT_METRIC]} per setting (dots: seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _hparam_value(value: Any) -> Any:
    """TensorBoard takes numbers, strings and booleans; anything else is shown as its JSON text."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def write_hparams(cfg: SweepConfig, sweep: SweepDir, log_dir: Path) -> int:
    """One HParams session per completed point: its setting's values and seed, and every val/test metric
    of every system (tags ``<split>/<system>/<metric>``). Rewritten from scratch each time. Returns the count."""
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

    shutil.rmtree(log_dir, ignore_errors=True)
    keys = sorted({key for point in expand_points(cfg) for key in point.setting.values})
    written = 0
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for point in expand_points(cfg):
            pdir = sweep.point(point, cfg.models)
            if not pdir.is_done():
                continue
            metrics, _ = point_metrics(cfg, pdir)
            hparams = {"setting": point.setting.name, "seed": point.seed,
                       **{key: _hparam_value(point.setting.values.get(key, "")) for key in keys}}
            flat = {f"{split}/{system}/{metric}": value for system, splits in metrics.items()
                    for split, values in splits.items() for metric, value in values.items()}
            writer.add_hparams(hparams, flat, run_name=f"{point.setting.name}/seed{point.seed}")
            written += 1
    return written


def write_report(cfg: SweepConfig, sweep: SweepDir, summary: SweepSummary) -> list[Path]:
    sweep.report_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = sweep.report_markdown, sweep.report_json, sweep.report_plot
    write_atomic(md, render_markdown(summary))
    write_atomic(js, json.dumps(asdict(summary), indent=2) + "\n")
    save_figure(spread_figure(summary), png)
    write_hparams(cfg, sweep, sweep.report_tensorboard)
    return [md, js, png, sweep.report_tensorboard]
