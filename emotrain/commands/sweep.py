"""``emotrain sweep run FILE --out DIR`` and ``emotrain sweep report DIR``: settings x seeds, and their spread.

``run`` expands the sweep file (``configs/sweeps/*.yaml``) into points, one ordinary run folder each, and
runs those not yet completed: here one after another, or with ``--slurm`` as one submitit job array
(one array task per point, ``--max-parallel`` at once). A file with ``search:`` runs an Optuna search
instead (:mod:`emotrain.sweep.search_runner`): its trials are the points, then the best are confirmed over seeds. ``report`` writes ``DIR/report/``: mean, std and
95% interval over seeds per setting, the setting chosen on val, a plot and TensorBoard HParams.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING

from emotrain.errors import UserError

if TYPE_CHECKING:
    from emotrain.sweep.spec import SweepConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emotrain.training.slurm_submit import add_slurm_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="{run,report}")
    run_p = sub.add_parser("run", help="run every point not yet completed (then write the report)")
    run_p.add_argument("sweep", help="sweep file: a YAML file or a packaged name (sweeps/demo_tiny)")
    run_p.add_argument("--out", type=Path, required=True, help="the sweep folder (a re-run skips completed points)")
    run_p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a sweep-file value, e.g. --set seeds=[0,1,2] or --set shards=DIR (repeatable)")
    run_p.add_argument("--slurm", action="store_true", help="submit the points as one SLURM job array (submitit)")
    run_p.add_argument("--max-parallel", type=int, default=4, help="with --slurm: array tasks running at once")
    run_p.add_argument("--wait", action="store_true", help="with --slurm: wait for every task, then write the report")
    add_slurm_arguments(run_p)
    report_p = sub.add_parser("report", help="the table over seeds, the setting chosen on val, plot and HParams")
    report_p.add_argument("sweep_dir", type=Path, help="a folder `emotrain sweep run --out` wrote")


def load_sweep(ref: str, overrides: list[str]) -> SweepConfig:
    from emotrain.config import find_config, load_config
    from emotrain.sweep.spec import SweepConfig

    file = find_config(ref)
    cfg = load_config(SweepConfig, file, overrides)
    cfg.name = cfg.name or file.stem
    return cfg


def report(sweep_dir: Path) -> int:
    from emotrain.sweep.layout import SweepDir
    from emotrain.sweep.outputs import render_markdown, write_report
    from emotrain.sweep.summary import summarise

    sweep = SweepDir(sweep_dir.absolute())
    cfg = sweep.read_config()
    if cfg.search is not None:
        from emotrain.sweep.search_report import render_markdown as render_search, write_search_report

        search, written = write_search_report(cfg, sweep)
        print(render_search(search))
        print(f"wrote {', '.join(str(p) for p in written)}")
        return 0
    summary = summarise(cfg, sweep)
    if summary.chosen is None:
        raise UserError(f"{sweep_dir}: no point has completed yet: nothing to report")
    written = write_report(cfg, sweep, summary)
    print(render_markdown(summary))
    print(f"wrote {', '.join(str(p) for p in written)}  (tensorboard --logdir {sweep.report_tensorboard}: HPARAMS)")
    return 0


def run(args: argparse.Namespace) -> int:
    from emotrain.sweep.layout import SweepDir

    if args.action == "report":
        return report(args.sweep_dir)
    cfg = load_sweep(args.sweep, args.overrides)
    sweep = SweepDir(args.out.absolute())
    if cfg.search is not None:
        from emotrain.sweep.search_array import run_search

        return run_search(cfg, sweep, args)
    if args.slurm:
        from emotrain.sweep.array import submit_array, wait_for

        for flag in ("max_parallel", "nodes", "cpus_per_task", "time"):
            if getattr(args, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
        jobs = submit_array(cfg, sweep, args, args.max_parallel)
        if not args.wait:
            print(f"submitted {len(jobs)} array task(s); when they end: emotrain sweep report {args.out}")
            return 0
        failed = wait_for(jobs)
    else:
        from emotrain.sweep.runner import run_local, say

        outcome = run_local(cfg, sweep)
        say(f"{len(outcome.completed)} completed, {len(outcome.skipped)} skipped (done before), "
            f"{len(outcome.failed)} failed{': ' + ', '.join(outcome.failed) if outcome.failed else ''}")
        failed = outcome.failed
        if outcome.interrupted:
            return 1
    from emotrain.sweep.summary import summarise

    if summarise(cfg, sweep).chosen is not None:
        report(args.out)
    return 1 if failed else 0
