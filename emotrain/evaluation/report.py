"""Reports of evaluated splits: ``report.json``, PNG figures and TensorBoard summaries.

Figures are built on bare ``matplotlib.figure.Figure`` objects rendered by the Agg
canvas, never through ``pyplot``: no global figure state, no GUI backend on a headless
node, and nothing to close. Input is the dictionary of :func:`emotrain.evaluation.metrics.compute_metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emotrain.evaluation.report_file import REPORT_FILE, EvalReport
from emotrain.files import atomic_output

SCALARS = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall", "ece", "nll")


def confusion_figure(metrics: Mapping[str, Any], title: str = "") -> Figure:
    """Row-normalised confusion matrix (recall on the diagonal), with the counts in each cell."""
    counts = np.asarray(metrics["confusion_matrix"], np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    classes = metrics["classes"]
    size = 2.0 + 0.75 * len(classes)
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot()
    image = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised)")
    fig.tight_layout()
    return fig


def per_class_figure(metrics: Mapping[str, Any], title: str = "") -> Figure:
    """Precision, recall and F1 side by side per class, support under each class name."""
    classes = metrics["classes"]
    per_class = metrics["per_class"]
    x = np.arange(len(classes))
    fig = Figure(figsize=(2.0 + 1.1 * len(classes), 4.2))
    ax = fig.add_subplot()
    for k, name in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [per_class[c][name] for c in classes], width=0.27, label=name)
    ax.set_xticks(x, [f"{c}\n(n={per_class[c]['support']})" for c in classes], fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.axhline(metrics["macro_f1"], color="black", linestyle="--", linewidth=1,
               label=f"macro-F1 {metrics['macro_f1']:.3f}")
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(title or "per-class precision / recall / F1")
    fig.tight_layout()
    return fig


def reliability_figure(metrics: Mapping[str, Any], title: str = "") -> Figure:
    """Accuracy against mean confidence per bin; the gap to the diagonal is what ECE sums."""
    bins = metrics["calibration"]
    edges = np.asarray(bins["edges"])
    count = np.asarray(bins["count"])
    width = np.diff(edges)
    fig = Figure(figsize=(5.2, 5.6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = count > 0
    left, w = edges[:-1][filled], width[filled]
    acc, conf = np.asarray(bins["accuracy"])[filled], np.asarray(bins["confidence"])[filled]
    ax.bar(left, acc, width=w, align="edge", edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(left, np.abs(conf - acc), bottom=np.minimum(conf, acc), width=w, align="edge", fill=False,
           hatch="//", edgecolor="red", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"reliability (ECE {metrics['ece']:.3f}, NLL {metrics['nll']:.3f})")
    ax_count.bar(edges[:-1], count, width=width, align="edge", color="grey")
    ax_count.set_xlabel("confidence (top-class probability)")
    ax_count.set_ylabel("samples")
    fig.tight_layout()
    return fig


def comparison_figure(rows: Mapping[str, Mapping[str, Any]], title: str = "") -> Figure:
    """Accuracy and macro-F1 (with its bootstrap interval) for several systems on one split."""
    names = list(rows)
    x = np.arange(len(names))
    f1 = np.array([rows[n]["macro_f1"] for n in names])
    ci = np.array([rows[n]["bootstrap"]["macro_f1"] for n in names])
    fig = Figure(figsize=(2.5 + 0.9 * len(names), 4.5))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [rows[n]["accuracy"] for n in names], width=0.4, label="accuracy", color="tab:blue")
    ax.bar(x + 0.2, f1, width=0.4, yerr=np.stack([f1 - ci[:, 0], ci[:, 1] - f1]), capsize=3,
           label="macro-F1 (95% CI)", color="tab:orange")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title or "systems compared")
    fig.tight_layout()
    return fig


def render(fig: Figure) -> np.ndarray:
    """RGB pixels [H, W, 3] of a figure (what TensorBoard stores)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def save_figure(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    return path


def split_figures(split: str, metrics: Mapping[str, Any]) -> dict[str, Figure]:
    return {
        "confusion": confusion_figure(metrics, f"{split}: confusion matrix (row-normalised)"),
        "per_class": per_class_figure(metrics, f"{split}: per-class precision / recall / F1"),
        "reliability": reliability_figure(metrics),
    }


def log_to_tensorboard(
    log_dir: str | Path, scalars: Mapping[str, float], figures: Mapping[str, Figure], step: int = 0
) -> None:
    """Write scalars and figures under their tags (e.g. ``eval/test/macro_f1``) at ``step``."""
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when asked for

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        for tag, fig in figures.items():
            writer.add_image(tag, render(fig), step, dataformats="HWC")


def split_scalars(prefix: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{name}": float(metrics[name]) for name in SCALARS}


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Mapping[str, Any]],
    *,
    extra: Mapping[str, Any] | None = None,
    tensorboard_dir: str | Path | None = None,
    step: int = 0,
) -> list[Path]:
    """Write ``report.json`` and three PNGs per split (``<split>_confusion.png`` ...).

    ``results`` maps a split name to its metrics; ``extra`` (run, checkpoint, config, the
    text fields the model read) is stored beside them so a report says what it measured.
    With ``tensorboard_dir``, the scalars go to ``eval/<split>/<metric>`` and the figures to
    ``eval/<split>/<figure>`` at ``step``. Returns the files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [EvalReport.from_results(results, extra).save(out / REPORT_FILE)]
    scalars: dict[str, float] = {}
    figures: dict[str, Figure] = {}
    for split, metrics in results.items():
        for kind, fig in split_figures(split, metrics).items():
            written.append(save_figure(fig, out / f"{split}_{kind}.png"))
            figures[f"eval/{split}/{kind}"] = fig
        scalars.update(split_scalars(f"eval/{split}", metrics))
    if tensorboard_dir is not None:
        log_to_tensorboard(tensorboard_dir, scalars, figures, step)
    return written


def markdown_table(rows: Mapping[str, Mapping[str, Any]], marked: Sequence[str] = ()) -> str:
    """One line per system: n, accuracy, macro-F1 with its 95% CI, weighted-F1, ECE, NLL."""
    lines = [
        "| system | n | accuracy | macro-F1 [95% CI] | weighted-F1 | ECE | NLL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rows.items():
        lo, hi = m["bootstrap"]["macro_f1"]
        label = f"**{name}**" if name in marked else name
        lines.append(
            f"| {label} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}] | "
            f"{m['weighted_f1']:.4f} | {m['ece']:.4f} | {m['nll']:.4f} |"
        )
    return "\n".join(lines)
