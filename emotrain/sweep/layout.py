"""The sweep folder: every path a sweep holds, and each point's done marker, in one typed owner::

    SWEEP/sweep.yaml                         the sweep file as loaded (every path absolute)
    SWEEP/points/<setting>/seed<S>/          one point
        run/  or  audio_text/ video_text/    ordinary run directories (emotrain.training.rundir.RunDir)
        fusion/                              emotrain fuse's outputs (pair sweeps)
        point.json                           how the point ended (:class:`PointStatus`); "completed" = skip it
    SWEEP/report/                            sweep.md, sweep.json, sweep.png, tb/ (TensorBoard HParams)
    SWEEP/submitit/                          submitit's job logs and pickles (SLURM)

A point is done only when its ``point.json`` says ``completed``, written last and atomically: a point
killed mid-way has none (or ``failed``) and is run again, its training resuming from its checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from emotrain.files import write_atomic
from emotrain.fusion.fusion_file import FUSION_FILE
from emotrain.training.rundir import RunDir
from emotrain.sweep.spec import Point, SweepConfig

COMPLETED, FAILED = "completed", "failed"


@dataclass
class PointStatus:
    """What ``point.json`` says."""

    status: str  # completed | failed
    wall_s: float
    error: str | None = None


@dataclass(frozen=True)
class PointDir:
    root: Path
    models: tuple[str, ...]

    def run(self, model: str) -> RunDir:
        return RunDir(self.root / model)

    @property
    def fusion(self) -> Path:
        return self.root / "fusion"

    @property
    def fusion_json(self) -> Path:
        return self.fusion / FUSION_FILE

    @property
    def status_path(self) -> Path:
        return self.root / "point.json"

    def read_status(self) -> PointStatus | None:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
            return PointStatus(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write_status(self, status: PointStatus) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.status_path, json.dumps(asdict(status), indent=2) + "\n")

    def is_done(self) -> bool:
        status = self.read_status()
        return status is not None and status.status == COMPLETED

    def clear_status(self) -> None:
        self.status_path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SweepDir:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "sweep.yaml"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "sweep.md"

    @property
    def report_json(self) -> Path:
        return self.report_dir / "sweep.json"

    @property
    def report_plot(self) -> Path:
        return self.report_dir / "sweep.png"

    @property
    def report_tensorboard(self) -> Path:
        return self.report_dir / "tb"

    @property
    def submitit_dir(self) -> Path:
        return self.root / "submitit"

    def point(self, point: Point, models: tuple[str, ...]) -> PointDir:
        return PointDir(self.root / "points" / point.setting.name / f"seed{point.seed}", models)

    def write_config(self, cfg: SweepConfig) -> None:
        from emotrain.config import to_dict

        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def read_config(self) -> SweepConfig:
        from emotrain.config import load_config
        from emotrain.errors import UserError

        if not self.config_path.is_file():
            raise UserError(f"{self.root} is not a sweep folder: {self.config_path.name} is missing "
                            "(run `emotrain sweep run FILE --out DIR` first)")
        return load_config(SweepConfig, self.config_path)
