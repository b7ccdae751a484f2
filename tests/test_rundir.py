"""The run directory's status entry point, as slurm/train.sbatch and the submitit job use it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from emotrain.errors import UserError
from emotrain.training.rundir import RunDir, RunStatus


def status_word(run_dir, *extra: str) -> str:
    return subprocess.run([sys.executable, "-m", "emotrain.training.rundir", "status", str(run_dir), *extra],
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


def test_a_second_launch_into_a_run_being_trained_is_one_line(tmp_path):
    import os
    from pathlib import Path

    emotrain = Path(sys.executable).parent / "emotrain"
    with RunDir(tmp_path / "run").lock():
        second = subprocess.run([str(emotrain), "train", "demo/audio_text", "--run-dir", str(tmp_path / "run"),
                                 "--set", f"data.shards={tmp_path}"], capture_output=True, text=True)
    assert second.returncode == 2
    assert second.stderr.strip() == (f"emotrain train: error: {tmp_path / 'run'} is being trained by pid {os.getpid()} "
                                     f"on {__import__('socket').gethostname()}: wait for it, or use another --run-dir")
    # released with its holder: the next launch gets past the lock (and stops at the missing manifest)
    third = subprocess.run([str(emotrain), "train", "demo/audio_text", "--run-dir", str(tmp_path / "run"),
                            "--set", f"data.shards={tmp_path}"], capture_output=True, text=True)
    assert third.returncode == 2 and "no manifest" in third.stderr


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom emotrain.training.rundir import RunDir\n"
                               "held = RunDir(sys.argv[1]).lock(); held.__enter__(); print('held', flush=True); time.sleep(120)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(UserError, match="is being trained by pid"):
            RunDir(tmp_path).lock().__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(tmp_path).lock():  # the kernel released it with the killed process
        pass
