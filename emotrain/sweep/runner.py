"""Running a sweep's points on this machine, one after another (CPU, or the GPUs of this machine).

Each point is the workflow of :mod:`emotrain.recipes.workflow` (train each model, evaluate val and test, fuse a
pair) into its own folder. A completed point (``point.json`` says so) is skipped; a point that fails
is marked ``failed`` with its one-line reason and the next one starts; a point killed mid-way has no
``completed`` marker, so the next run does it again and its training resumes from its checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from emotrain.log import get_logger, log_to_folder
from emotrain.names import AUDIO_TEXT, VIDEO_TEXT
from emotrain.recipes import workflow
from emotrain.config import ConfigError
from emotrain.sweep.layout import COMPLETED, FAILED, PointDir, PointStatus, SweepDir
from emotrain.sweep.spec import Point, SweepConfig, expand_points, fusion_overrides, model_overrides

log = get_logger(__name__)


def say(message: str) -> None:
    log.info(f"[sweep] {message}")


@dataclass
class SweepOutcome:
    """What one pass over the points did: names of the points skipped, completed and failed."""

    skipped: list[str]
    completed: list[str]
    failed: list[str]


def fuse_point(cfg: SweepConfig, point: Point, pdir: PointDir) -> None:
    """The fusion of a pair point (in this process; nothing to do for a one-model sweep)."""
    if cfg.pair is None:
        return
    workflow.fuse(cfg.pair.fusion, pdir.run(AUDIO_TEXT).root, pdir.run(VIDEO_TEXT).root, pdir.fusion,
                  fusion_overrides(cfg, point))


def run_point(cfg: SweepConfig, point: Point, pdir: PointDir, nproc: int) -> None:
    """Train, evaluate and fuse one point on ``nproc`` local ranks; raises ConfigError (one line) on failure."""
    runs = [pdir.run(model).root for model in cfg.models]
    for model, run_dir in zip(cfg.models, runs):
        say(f"{point.name}: train {model}")
        workflow.train(cfg.train_config_of(model), run_dir, model_overrides(cfg, point, model), nproc)
    say(f"{point.name}: evaluate on val and test")
    workflow.evaluate(runs, nproc)
    if cfg.pair is not None:
        say(f"{point.name}: fuse")
    fuse_point(cfg, point, pdir)


def run_local(cfg: SweepConfig, sweep: SweepDir) -> SweepOutcome:
    """Every point not yet completed, in order; returns what happened to each."""
    sweep.write_config(cfg)
    log_to_folder(sweep.root)
    points = expand_points(cfg)
    nproc = workflow.local_ranks(cfg.processes)
    outcome = SweepOutcome([], [], [])
    for index, point in enumerate(points, 1):
        pdir = sweep.point(point, cfg.models)
        if pdir.is_done():
            say(f"point {index}/{len(points)} {point.name}: completed before, skipped")
            outcome.skipped.append(point.name)
            continue
        say(f"point {index}/{len(points)} {point.name}: {nproc} rank(s) -> {pdir.root}")
        pdir.clear_status()
        start = time.perf_counter()
        try:
            run_point(cfg, point, pdir, nproc)
        except ConfigError as err:  # UserError included: a failed step, a bad override
            pdir.write_status(PointStatus(FAILED, time.perf_counter() - start, str(err)))
            say(f"point {point.name} FAILED: {err}")
            outcome.failed.append(point.name)
            continue
        pdir.write_status(PointStatus(COMPLETED, time.perf_counter() - start))
        say(f"point {point.name}: completed in {time.perf_counter() - start:.0f} s")
        outcome.completed.append(point.name)
    return outcome
