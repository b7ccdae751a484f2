"""The run directory: every path a run holds, and the reading and writing of its status and config.

One training run owns one folder; training, evaluation, export, fusion, the SLURM script and the
submitit job all find their files through :class:`RunDir`, so the layout is spelled out here only::

    RUN/config.yaml              the resolved run config (self-contained: every path absolute)
    RUN/status.json              how the last launch ended (:class:`RunStatus`)
    RUN/versions.json            git revision and package versions of the last launch
    RUN/deepspeed.json           the DeepSpeed config the last launch used
    RUN/checkpoints/stepNNNNNNNN DeepSpeed tags (emotrain.training.checkpoint owns their insides)
    RUN/tb/                      TensorBoard events (training and evaluation)
    RUN/predictions/<split>.npz  scored turns for fusion, + classes.json
    RUN/eval/<split>/            report.json and plots
    RUN/export/                  model.safetensors + config.yaml (emotrain export)

``python -m emotrain.training.rundir status RUN [--launch ID]`` prints the status word (or ``unknown``): the
one entry point shell scripts use instead of parsing the JSON themselves. With ``--launch``, a
status written by another launch prints ``stale``: a relaunch that crashed before writing its own
status leaves the previous launch's ``preempted`` behind, which must not requeue the job again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from emotrain.errors import UserError
from emotrain.files import write_atomic

if TYPE_CHECKING:
    from emotrain.training.run_config import RunConfig

COMPLETED, PREEMPTED, NONFINITE = "completed", "preempted", "nonfinite"


@dataclass
class RunStatus:
    """What ``status.json`` says: how the last launch of this run ended."""

    status: str  # completed | preempted | nonfinite
    step: int
    total_steps: int
    resumed_from: int | None = None
    world_size: int = 1
    num_nodes: int = 1
    launcher: str = "unknown"
    best_step: int | None = None  # the step of the best checkpoint (checkpoints/best), if validation ran
    best_metric: str | None = None
    best_value: float | None = None
    detail: str | None = None  # why it stopped, when that is not plain "all steps done" (early stopping)
    launch_id: str | None = None  # $EMOTRAIN_LAUNCH_ID of the launch that wrote it (see main)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunDir:
    """A run's folder; creating the object touches nothing on disk."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __str__(self) -> str:
        return str(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def versions_path(self) -> Path:
        return self.root / "versions.json"

    @property
    def deepspeed_path(self) -> Path:
        return self.root / "deepspeed.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, split: str) -> Path:
        return self.predictions_dir / f"{split}.npz"

    def eval_dir(self, split: str) -> Path:
        return self.eval_root / split

    def eval_report(self, split: str) -> Path:
        """The split's ``report.json`` (written by :func:`emotrain.evaluation.report.write_report`)."""
        return self.eval_dir(split) / "report.json"

    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    def is_run(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> RunDir:
        """This object, or a one-line error when the folder holds no run."""
        if not self.is_run():
            raise UserError(f"{self.root} is not a run directory: {self.config_path.name} is missing")
        return self

    def write_config(self, cfg: RunConfig) -> None:
        from emotrain.config import to_dict

        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def read_config(self) -> RunConfig:
        from emotrain.training.run_config import load_run_config

        return load_run_config(self.require().config_path)

    def model_kind(self) -> str | None:
        """``model.kind`` of the saved config without validating the rest (None when there is none)."""
        from emotrain.config import ConfigError, read_yaml

        try:
            model = read_yaml(self.config_path).get("model") if self.is_run() else None
        except ConfigError:
            return None
        return model.get("kind") if isinstance(model, dict) else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``RUN/.lock`` while training: a second launch into the same run is refused with one line.

        An advisory ``flock``: the kernel releases it when the holder exits, however it exits, so a
        crashed or killed launch never leaves a stale lock (the file itself stays and is reused).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(f"{self.root} is being trained by {holder}: wait for it, or use another --run-dir") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_status(self, status: RunStatus) -> None:
        write_atomic(self.status_path, json.dumps(asdict(status), indent=2) + "\n")

    def read_status(self) -> RunStatus | None:
        """The last launch's status; None when no launch has finished (or the file is unreadable)."""
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
            return RunStatus.from_dict(data) if isinstance(data, dict) else None
        except (OSError, ValueError, TypeError):
            return None

    def write_json(self, path: Path, data: Any) -> None:
        """A JSON file of this run (versions, DeepSpeed config), written atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=2) + "\n")


LAUNCH_ENV = "EMOTRAIN_LAUNCH_ID"


def main(argv: list[str] | None = None) -> int:
    """``python -m emotrain.training.rundir status RUN [--launch ID]``: the status word, ``unknown`` if there
    is none, ``stale`` if ``--launch`` names another launch than the one that wrote it (the SLURM script asks)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m emotrain.training.rundir",
                                     description="print a run's status word (for scripts)")
    parser.add_argument("query", choices=["status"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--launch", default=None, help="the launch id this script started (EMOTRAIN_LAUNCH_ID)")
    args = parser.parse_args(argv)
    status = RunDir(args.run_dir).read_status()
    if status is None:
        print("unknown")
    elif args.launch is not None and status.launch_id != args.launch:
        print("stale")
    else:
        print(status.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
