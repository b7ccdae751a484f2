"""What a run leaves for humans: TensorBoard scalars, a progress bar (a periodic line when not on a terminal), ``versions.json``, ``deepspeed.json``.

Only rank 0 writes; on other ranks every method is a no-op so the loop needs no rank checks.
After a resume the writer purges events logged beyond the restored step (by the killed run) and
logs against the restored global step, so curves continue instead of restarting at 0 (a writer
that starts at step 0 again draws the resumed run on top of the old curve).
"""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from emotrain.log import get_logger, progress
from emotrain.training.rundir import RunDir

log = get_logger(__name__)

PACKAGES = ("emotrain", "torch", "deepspeed", "transformers", "accelerate", "webdataset", "numpy")


class RunLog:
    def __init__(self, run_dir: Path, is_main: bool, start_step: int, total_steps: int) -> None:
        self._writer = None
        self._bar = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            # Events up to the restored step describe the checkpointed state; later ones are the killed run's.
            self._writer = SummaryWriter(str(RunDir(run_dir).tensorboard), purge_step=start_step + 1 if start_step else None)
            self._bar = progress(total=total_steps, initial=start_step, desc="train", unit="step")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()

    def advance(self, loss: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self._bar.update(1)

    def message(self, text: str) -> None:
        if self._bar is not None:
            log.info(text)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()


def _git_revision(repo: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    """Code and library versions, so a result can be traced to what produced it."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "git": _git_revision(Path(__file__).resolve().parents[2]),  # the checkout holding emotrain/, if any
        "packages": packages,
    }


def write_run_metadata(run_dir: Path, deepspeed_config: dict) -> None:
    """``versions.json`` and the effective ``deepspeed.json`` of this launch (a resume overwrites both)."""
    run = RunDir(run_dir)
    run.write_json(run.versions_path, versions())
    run.write_json(run.deepspeed_path, deepspeed_config)
