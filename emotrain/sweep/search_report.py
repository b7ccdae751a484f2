"""A search's report in ``SWEEP/report/``: ``search.md`` and ``search.json`` (every trial with its values,
state and val objective; the confirmation over seeds and the setting it chose), ``search_history.png``
(the objective per trial and the best so far), ``search_importance.png`` (Optuna's parameter
importances) and ``search_tb/`` (TensorBoard HParams, one session per trial). The confirmation sweep's
own report (``sweep.md`` ...) is written beside it by :mod:`emotrain.sweep.outputs`.

The setting is chosen by its **mean val objective over seeds** among the confirmed trials; test is
reported (mean, std, 95% interval of the headline system), never used to choose.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from emotrain.files import write_atomic
from emotrain.evaluation.report import save_figure
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import Point, Setting, SweepConfig
from emotrain.sweep.study import open_study, trial_dir, trial_name
from emotrain.sweep.summary import METRICS, Stat, summarise


@dataclass
class TrialRow:
    number: int
    name: str
    state: str  # complete | pruned | fail | running
    params: dict[str, Any]
    value: float | None  # the val objective (pruned: the last value reported)
    pruned_step: int | None
    reported_steps: int  # intermediate values reported to the pruner
    folder: str


@dataclass
class ConfirmRow:
    setting: str
    params: dict[str, Any]
    seeds: list[int]
    missing: list[int]
    val_objective: Stat | None
    test: dict[str, Stat] = field(default_factory=dict)  # headline system, test metrics over seeds


@dataclass
class SearchSummary:
    name: str
    objective: str
    direction: str
    n_trials: int
    headline: str
    trials: list[TrialRow]
    best_trial: str | None  # the best single trial on val (its first seed)
    confirm: list[ConfirmRow]
    chosen: str | None  # chosen by the mean val objective over the confirmation seeds
    chosen_on: str


def _better(direction: str):
    return max if direction == "maximize" else min


def summarise_search(cfg: SweepConfig, sweep: SweepDir) -> SearchSummary:
    from emotrain.sweep.search_runner import confirm_dir
    from emotrain.sweep.trials import objective_value

    assert cfg.search is not None
    study = open_study(cfg, sweep)
    rows = []
    for t in study.get_trials(deepcopy=False):
        pdir = trial_dir(cfg, sweep, t.number, t.params)
        status = pdir.read_status()
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                      if t.intermediate_values else None)
        rows.append(TrialRow(t.number, trial_name(t.number), t.state.name.lower(), dict(t.params), value,
                             status.step if status is not None else None, len(t.intermediate_values), str(pdir.root)))
    direction, metric = cfg.search.objective.direction, cfg.search.objective.metric
    complete = [r for r in rows if r.state == "complete"]
    best_trial = _better(direction)(complete, key=lambda r: r.value).name if complete else None
    confirm, chosen, headline = [], None, "fusion" if cfg.pair is not None else cfg.models[0]
    cdir = confirm_dir(sweep)
    if cdir.config_path.is_file():
        ccfg = cdir.read_config()
        summary = summarise(ccfg, cdir)
        headline = summary.headline
        for setting in summary.settings:
            values = []
            for seed in setting.seeds:
                values.append(objective_value(cfg, cdir.point(Point(Setting(setting.name, setting.values), seed),
                                                              ccfg.models)))
            test = {m: setting.stats[headline]["test"][m] for m in METRICS} if setting.seeds else {}
            confirm.append(ConfirmRow(setting.name, setting.values, setting.seeds, setting.missing,
                                      Stat.of(values) if values else None, test))
        scored = [r for r in confirm if r.val_objective is not None]
        if scored:
            chosen = _better(direction)(scored, key=lambda r: r.val_objective.mean).setting
    return SearchSummary(cfg.name, metric, direction, cfg.search.n_trials, headline, rows, best_trial, confirm, chosen,
                         f"mean val {metric} of {headline} over the confirmation seeds ({direction}; test never "
                         "chooses)")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_markdown(summary: SearchSummary) -> str:
    keys = sorted({k for r in summary.trials for k in r.params})
    lines = [f"# Search {summary.name}", "",
             f"Objective: val {summary.objective} ({summary.direction}), {len(summary.trials)} of {summary.n_trials} "
             f"trials. Best single trial on val: **{summary.best_trial}**.", "",
             "| trial | state | " + " | ".join(keys) + f" | val {summary.objective} | pruned at step |",
             "|---|---|" + "---:|" * len(keys) + "---:|---:|"]
    for r in summary.trials:
        cells = [f"{r.params[k]:.4g}" if isinstance(r.params.get(k), float) else str(r.params.get(k, "-")) for k in keys]
        lines.append(f"| {r.name} | {r.state} | " + " | ".join(cells) + f" | {_fmt(r.value)} | "
                     f"{r.pruned_step if r.pruned_step is not None else '-'} |")
    if summary.confirm:
        lines += ["", "## Confirmation over seeds", "",
                  f"Chosen: **{summary.chosen}** by the {summary.chosen_on}. Test of {summary.headline}: "
                  "mean +/- std [95% t-interval].", "",
                  f"| setting | seeds | val {summary.objective} | " + " | ".join(f"test {m}" for m in METRICS) + " |",
                  "|---|---|---:|" + "---:|" * len(METRICS)]
        for c in summary.confirm:
            name = f"**{c.setting}** (chosen)" if c.setting == summary.chosen else c.setting
            val = (f"{c.val_objective.mean:.4f} +/- {c.val_objective.std:.4f}" if c.val_objective else "-")
            tests = [f"{s.mean:.3f} +/- {s.std:.3f} [{s.ci95[0]:.3f}, {s.ci95[1]:.3f}]" for s in c.test.values()]
            lines.append(f"| {name} | {c.seeds}{f' (missing {c.missing})' if c.missing else ''} | {val} | "
                         + " | ".join(tests or ["-"] * len(METRICS)) + " |")
    return "\n".join(lines) + "\n"


def history_figure(summary: SearchSummary) -> Figure:
    """The val objective of every trial by number (complete: dots; pruned: crosses at their last report)
    and the best complete trial so far."""
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    for state, marker in (("complete", "o"), ("pruned", "x"), ("fail", "s")):
        picked = [r for r in summary.trials if r.state == state and r.value is not None]
        if picked:
            ax.scatter([r.number for r in picked], [r.value for r in picked], marker=marker, label=state)
    best, line = None, []
    pick = _better(summary.direction)
    for r in summary.trials:
        if r.state == "complete" and r.value is not None:
            best = r.value if best is None else pick(best, r.value)
        line.append(best)
    ax.step(range(len(line)), [float("nan") if v is None else v for v in line], where="post", color="black",
            label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {summary.objective}")
    ax.set_title(f"search {summary.name}: optimization history", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def importance_figure(study, title: str) -> Figure | None:
    """Optuna's parameter importances (fANOVA) over the complete trials; None with fewer than two."""
    import optuna

    try:
        with warnings.catch_warnings():  # "too few trials": the figure then shows equal shares, as it says
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few complete trials, or a single value everywhere
        return None
    if not importances:
        return None
    fig = Figure(figsize=(6.5, 0.6 + 0.5 * len(importances) + 1.5))
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (share of the objective's variance)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_search_hparams(summary: SearchSummary, log_dir: Path) -> int:
    """One HParams session per trial (every state): its values, state and val objective."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(log_dir, ignore_errors=True)
    keys = sorted({k for r in summary.trials for k in r.params})
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for r in summary.trials:
            hparams = {"trial": r.number, "state": r.state, **{k: r.params.get(k, "") for k in keys}}
            metrics = {f"val/{summary.objective}": r.value if r.value is not None else float("nan")}
            writer.add_hparams(hparams, metrics, run_name=r.name)
    return len(summary.trials)


def write_search_report(cfg: SweepConfig, sweep: SweepDir) -> tuple[SearchSummary, list[Path]]:
    """Everything above, plus the confirmation sweep's own report when it has a completed point."""
    from emotrain.sweep.outputs import write_report
    from emotrain.sweep.search_runner import confirm_dir

    summary = summarise_search(cfg, sweep)
    out = sweep.report_dir
    written: list[Path] = []
    cdir = confirm_dir(sweep)
    if cdir.config_path.is_file():
        ccfg = cdir.read_config()
        csummary = summarise(ccfg, cdir)
        if csummary.chosen is not None:
            # first: the sweep report replaces the report folder as one unit; the search's files go in after it
            written += write_report(ccfg, cdir, csummary)
    out.mkdir(parents=True, exist_ok=True)
    search_files = [out / "search.md", out / "search.json", out / "search_history.png"]
    write_atomic(search_files[0], render_markdown(summary))
    write_atomic(search_files[1], json.dumps(asdict(summary), indent=2) + "\n")
    save_figure(history_figure(summary), search_files[2])
    importance = importance_figure(open_study(cfg, sweep), f"search {cfg.name}: parameter importances")
    if importance is not None:
        search_files.append(save_figure(importance, out / "search_importance.png"))
    write_search_hparams(summary, out / "search_tb")
    search_files.append(out / "search_tb")
    return summary, search_files + written

