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
from emotrain.sweep.layout import COMPLETED, FAILED, RUNNING, PointDir, PointStatus, SweepDir
from emotrain.sweep.plan import plan
from emotrain.sweep.steps import PointSteps, local_steps
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
    interrupted: str | None = None  # the point whose training stopped on a signal (checkpointed): the pass ended there


def fuse_point(cfg: SweepConfig, point: Point, pdir: PointDir) -> None:
    """The fusion of a pair point (in this process; nothing to do for a one-model sweep)."""
    if cfg.pair is None:
        return
    workflow.fuse(cfg.pair.fusion, pdir.run(AUDIO_TEXT).root, pdir.run(VIDEO_TEXT).root, pdir.fusion,
                  fusion_overrides(cfg, point))


def run_point(cfg: SweepConfig, point: Point, pdir: PointDir, steps: PointSteps, is_main: bool = True) -> bool:
    """Train, evaluate and fuse one point; raises ConfigError (one line) on failure; False when a training stopped
    on a signal (its checkpoint written: the next run of the sweep, or the requeued task, resumes it). Collective
    when ``steps`` are (every rank of an array task calls it); rank 0 alone reports and fuses."""
    runs = [pdir.run(model).root for model in cfg.models]
    for model, run_dir in zip(cfg.models, runs):
        if is_main:
            say(f"{point.name}: train {model}")
        if not steps.train(cfg.train_config_of(model), run_dir, model_overrides(cfg, point, model), prune=False):
            return False
    if is_main:
        say(f"{point.name}: evaluate on val and test")
    steps.evaluate(runs)
    if is_main:
        if cfg.pair is not None:
            say(f"{point.name}: fuse")
        fuse_point(cfg, point, pdir)
    return True


def run_local(cfg: SweepConfig, sweep: SweepDir) -> SweepOutcome:
    """Every point not yet completed, in order; returns what happened to each."""
    plans = plan(cfg, sweep)  # every point resolves, and none ran under another configuration: else one line now
    sweep.write_config(cfg)
    log_to_folder(sweep.root)
    points = expand_points(cfg)
    nproc = workflow.local_ranks(cfg.processes)
    steps = local_steps(nproc)
    outcome = SweepOutcome([], [], [])
    for index, point in enumerate(points, 1):
        pdir = sweep.point(point, cfg.models)
        if pdir.is_done():
            say(f"point {index}/{len(points)} {point.name}: completed before, skipped")
            outcome.skipped.append(point.name)
            continue
        say(f"point {index}/{len(points)} {point.name}: {nproc} rank(s) -> {pdir.root}")
        recorded = plans[point.name]
        pdir.write_status(PointStatus(RUNNING, 0.0, None, recorded["config"], recorded["data"]))
        start = time.perf_counter()
        try:
            finished = run_point(cfg, point, pdir, steps)
        except ConfigError as err:  # UserError included: a failed step, a bad override
            pdir.write_status(PointStatus(FAILED, time.perf_counter() - start, str(err), recorded["config"],
                                          recorded["data"]))
            say(f"point {point.name} FAILED: {err}")
            outcome.failed.append(point.name)
            continue
        if not finished:  # still ``running`` in point.json: the next run skips nothing of it and resumes its training
            say(f"point {point.name}: interrupted; run the same command again to resume it")
            outcome.interrupted = point.name
            break
        pdir.write_status(PointStatus(COMPLETED, time.perf_counter() - start, None, recorded["config"], recorded["data"]))
        say(f"point {point.name}: completed in {time.perf_counter() - start:.0f} s")
        outcome.completed.append(point.name)
    return outcome
