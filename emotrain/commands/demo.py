"""``emotrain demo``: the whole job on a synthetic corpus, end to end, with one command.

synthesise an AvaMERG-layout corpus -> pack it into shards -> train model A (audio+text) and
model B (video+text), each on several ranks with DeepSpeed ZeRO-2 in bf16 -> evaluate both on
val and test (every rank, each turn once) -> calibrate and late-fuse -> one results table ->
bundle the trained system and predict the test split with it (``emotrain bundle``, ``emotrain predict``).

Every setting lives in the packaged ``configs/demo/`` (``demo.yaml`` plus the two training configs
it names); nothing here picks a number. Everything it writes goes under ``--workdir`` (default
``runs/demo`` in the working directory), so it runs from any folder. Ranks: one per GPU when there
are GPUs, else ``processes`` CPU ranks. Stages that already finished are not redone: the corpus is kept,
packing keeps verified shards, training resumes from its checkpoints (a finished run
returns at once), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from emotrain.log import get_logger
from emotrain.recipes import workflow
from emotrain.config import load_config
from emotrain.data.pack import PackOptions, pack
from emotrain.data.splits import SplitRecipe
from emotrain.data.synthetic import generate_corpus
from emotrain.errors import UserError
from emotrain.labels import load_scheme
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.names import AUDIO_TEXT, METRIC_LABELS, TEST, VIDEO_TEXT
from emotrain.recipes.demo import DEFAULT_CONFIG, MODELS, DemoConfig
from emotrain.training.rundir import RunDir

log = get_logger(__name__)



def _say(message: str) -> None:
    log.info(f"[demo] {message}")


def ranks_for(cfg: DemoConfig) -> int:
    """One rank per GPU when there are GPUs, else the configured number of CPU ranks."""
    return workflow.local_ranks(cfg.processes)


def make_corpus(cfg: DemoConfig, corpus_dir: Path) -> None:
    if (corpus_dir / "train.json").is_file():
        _say(f"corpus: keeping {corpus_dir}")
        return
    _say(f"corpus: synthesising {cfg.corpus.conversations} conversations (seed {cfg.corpus.seed})")
    generate_corpus(corpus_dir, cfg.corpus.conversations, cfg.corpus.seed, cfg.corpus.spec, workers=cfg.corpus.workers,
                    progress=True)


def make_shards(cfg: DemoConfig, corpus_dir: Path, shards_dir: Path) -> None:
    _say(f"pack: {corpus_dir} -> {shards_dir}")
    manifests = pack(PackOptions(
        source=corpus_dir, out=shards_dir, scheme=load_scheme(cfg.pack.labels),
        recipe=SplitRecipe(cfg.pack.val_frac, cfg.pack.test_frac, seed=cfg.corpus.seed),
        workers=cfg.pack.workers, max_per_shard=cfg.pack.max_per_shard, progress=True, video=cfg.pack.video,
    ))
    for split, manifest in manifests.items():
        _say(f"  {split}: {manifest.conversations} conversations, {manifest.labelled_turns} labelled turns")


def train_model(cfg: DemoConfig, model: str, shards_dir: Path, run_dir: Path, nproc: int) -> None:
    overrides = [f"data.shards={shards_dir}", *cfg.train_overrides, *cfg.model_overrides.get(model, [])]
    _say(f"train {model}: {nproc} rank(s) -> {run_dir}")
    workflow.train(cfg.train_configs[model], run_dir, overrides, nproc)


def evaluate(runs: dict[str, Path], nproc: int) -> None:
    _say(f"evaluate {' and '.join(runs)} on val and test")
    workflow.evaluate(list(runs.values()), nproc)


def fuse(cfg: DemoConfig, runs: dict[str, Path], report_dir: Path) -> str:
    _say("fuse: calibrate on val, pick a strategy on val, report on test")
    return workflow.fuse(cfg.fusion, runs[AUDIO_TEXT], runs[VIDEO_TEXT], report_dir)


def bundle_and_predict(runs: dict[str, Path], report_dir: Path, shards_dir: Path, bundle_dir: Path, out: Path) -> None:
    """Both runs and their fusion in one bundle (made afresh: the runs may have changed), then the test split
    predicted with it, as a user would: ``emotrain bundle`` and ``emotrain predict``, each a process of
    its own like every other step (its environment picks DeepSpeed's CPU accelerator on a CPU machine,
    which an in-process call would announce with a warning)."""
    import shutil

    _say(f"bundle: {bundle_dir}")
    shutil.rmtree(bundle_dir, ignore_errors=True)
    workflow.launch(1, ["bundle", "--audio", str(runs[AUDIO_TEXT]), "--video", str(runs[VIDEO_TEXT]),
                        "--fusion", str(report_dir), "--out", str(bundle_dir)])
    _say(f"predict: the test split with the bundle -> {out}")
    workflow.launch(1, ["predict", str(bundle_dir), "--shards", str(shards_dir), "--split", TEST, "--out", str(out)])


def results_table(fusion_dir: Path) -> str:
    """Each model and each fusion strategy on test: the four headline metrics."""
    summary = FusionSummary.load(fusion_dir)
    rows = summary.test
    width = max(len(name) for name in rows) + 2
    header = "system".ljust(width) + "".join(f"{label:>13}" for label in METRIC_LABELS.values())
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        mark = " <- chosen on val" if name == summary.chosen_row else ""
        lines.append(name.ljust(width) + "".join(f"{metrics[key]:>13.3f}" for key in METRIC_LABELS) + mark)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="demo config: a YAML file or a packaged name (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"),
                        help="where the corpus, shards, runs and fusion report go (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a demo setting, e.g. --set corpus.conversations=200 (repeatable)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="multi-seed variant: train and fuse on N training seeds (a sweep under WORKDIR/sweep) "
                        "and print mean +/- std over them")
    parser.add_argument("--sweep", default=None, help="multi-seed variant with this sweep file (default with --seeds: "
                        "sweeps/demo); the demo's shards are set on it")


def run_seeds(cfg: DemoConfig, args: argparse.Namespace, work: Path, shards_dir: Path, start: float) -> int:
    """The multi-seed variant: the demo's runs on several training seeds, as a sweep (no bundle: which seed?)."""
    from emotrain.sweep.demo import demo_sweep, run_demo_sweep
    from emotrain.sweep.layout import SweepDir

    if args.seeds is not None and args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    sweep_cfg = demo_sweep(cfg, shards_dir, args.sweep, args.seeds)
    sweep = SweepDir(work / "sweep")
    _say(f"sweep {sweep_cfg.name}: seeds {sweep_cfg.seeds} -> {sweep.root}")
    table, failed = run_demo_sweep(sweep_cfg, sweep)
    minutes = (time.perf_counter() - start) / 60
    print()
    print("Results on the synthetic test split, mean +/- std over training seeds (synthetic data: not a benchmark)")
    print(table)
    print()
    print(f"wall time: {minutes:.1f} min for {len(sweep_cfg.seeds)} seed(s)")
    print(f"sweep report: {sweep.report_markdown} (and sweep.json, sweep.png); HParams: tensorboard --logdir "
          f"{sweep.report_tensorboard}")
    if failed:
        raise UserError(f"{len(failed)} point(s) failed: {', '.join(failed)}")
    return 0


def run(args: argparse.Namespace) -> int:
    cfg = load_config(DemoConfig, args.config, args.overrides)
    start = time.perf_counter()
    work = args.workdir.absolute()
    corpus_dir, shards_dir, report_dir = work / "corpus", work / "shards" / "demo", work / "fusion"
    bundle_dir, predictions_dir = work / "bundle", work / "predictions"
    runs = {model: work / "runs" / model for model in MODELS}
    nproc = ranks_for(cfg)
    make_corpus(cfg, corpus_dir)
    make_shards(cfg, corpus_dir, shards_dir)
    if args.seeds is not None or args.sweep is not None:
        return run_seeds(cfg, args, work, shards_dir, start)
    for model in MODELS:
        train_model(cfg, model, shards_dir, runs[model], nproc)
    evaluate(runs, nproc)
    fuse(cfg, runs, report_dir)
    bundle_and_predict(runs, report_dir, shards_dir, bundle_dir, predictions_dir)
    minutes = (time.perf_counter() - start) / 60
    print()
    print("Results on the synthetic test split (synthetic data: a check that everything learns, not a benchmark)")
    print(results_table(report_dir))
    print()
    print(f"wall time: {minutes:.1f} min on {nproc} {'GPU' if torch.cuda.is_available() else 'CPU'} rank(s)")
    print(f"fusion report and plots: {report_dir}  (fusion.md, fusion.png, report.json)")
    for model in MODELS:
        print(f"{model}: checkpoints {RunDir(runs[model]).checkpoints}, evaluation {RunDir(runs[model]).eval_root}")
    print(f"bundle: {bundle_dir}  (emotrain predict {bundle_dir} --avamerg DIR --out OUT)")
    print(f"test split predicted with it: {predictions_dir}")
    print(f"TensorBoard: tensorboard --logdir {work}")
    return 0
