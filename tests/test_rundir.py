"""The run directory's status entry point, as slurm/train.sbatch and the submitit job use it."""

from __future__ import annotations

import subprocess
import sys

from emotrain.rundir import RunDir, RunStatus


def status_word(run_dir, *extra: str) -> str:
    return subprocess.run([sys.executable, "-m", "emotrain.rundir", "status", str(run_dir), *extra],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_only_the_launch_that_wrote_preempted_is_told_preempted(tmp_path):
    run = RunDir(tmp_path)
    assert status_word(tmp_path) == "unknown"
    run.write_status(RunStatus(status="preempted", step=50, total_steps=100, launch_id="7.0.1"))
    assert status_word(tmp_path) == "preempted"
    assert status_word(tmp_path, "--launch", "7.0.1") == "preempted"
    # the relaunch 7.1.x crashed before writing its own status: the old "preempted" is not its own
    assert status_word(tmp_path, "--launch", "7.1.2") == "stale"


def test_a_status_file_of_the_wrong_shape_reads_as_none(tmp_path):
    RunDir(tmp_path).status_path.write_text("[1]")
    assert RunDir(tmp_path).read_status() is None and status_word(tmp_path) == "unknown"
